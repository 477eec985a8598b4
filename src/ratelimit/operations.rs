//! What a GraphQL operation costs in rate limits, read from its document before it runs.
//!
//! - a mutation with `sendMessage`, `regenerateMessage` or `editMessage` among its root fields:
//!   one `Generation` cell per such field (aliases count; fragments at the root are followed);
//! - a mutation made only of `login`, `requestPasswordReset` and `resetPassword`: nothing here,
//!   those have their own per-email and per-IP limits in the auth service;
//! - any other mutation: one `Mutation` cell (`register` per client IP, being anonymous);
//! - a query, or anything that does not parse or select an operation: one `Query` cell;
//! - a subscription: `Charge::Subscription`, which the transport prices.
//!
//! The subject is the authenticated user, or the client IP otherwise.

use std::collections::HashSet;

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};

use crate::auth::{Auth, ClientInfo};
use crate::error::AppResult;
use crate::ratelimit::{LimitClass, Limiter};

/// Root mutation fields that start a generation.
pub const GENERATION_FIELDS: [&str; 3] = ["sendMessage", "regenerateMessage", "editMessage"];

/// Root mutation fields limited per email and IP by the auth service instead.
pub const EXEMPT_FIELDS: [&str; 3] = ["login", "requestPasswordReset", "resetPassword"];

/// What one operation costs before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// Nothing from the class limits.
    Exempt,
    /// A subscription: over WebSocket only `WsSubscribe` counts; elsewhere one `Query` cell.
    Subscription,
    /// `cells` of this class.
    Class(LimitClass, u32),
}

impl Charge {
    /// The class cells, a subscription counting as one query.
    pub fn cells(self) -> Option<(LimitClass, u32)> {
        match self {
            Charge::Exempt => None,
            Charge::Subscription => Some((LimitClass::Query, 1)),
            Charge::Class(class, cells) => Some((class, cells)),
        }
    }
}

/// The charge of `request`'s operation. The parsed document is kept in the request, so
/// execution does not parse it again. A query over `max_query_bytes` is not parsed here
/// (execution refuses it): it costs one query.
pub fn charge(request: &mut async_graphql::Request, max_query_bytes: usize) -> Charge {
    if request.query.len() > max_query_bytes {
        return Charge::Class(LimitClass::Query, 1);
    }
    let operation_name = request.operation_name.clone();
    match request.parsed_query() {
        Ok(document) => charge_document(document, operation_name.as_deref()),
        Err(_) => Charge::Class(LimitClass::Query, 1), // execution reports the syntax error
    }
}

/// The charge of the operation `operation_name` selects in `document`.
pub fn charge_document(document: &ExecutableDocument, operation_name: Option<&str>) -> Charge {
    let operation = match (&document.operations, operation_name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        _ => None,
    };
    let Some(operation) = operation else {
        return Charge::Class(LimitClass::Query, 1); // execution reports the error
    };
    match operation.node.ty {
        OperationType::Query => Charge::Class(LimitClass::Query, 1),
        OperationType::Subscription => Charge::Subscription,
        OperationType::Mutation => {
            let mut fields = Vec::new();
            let mut seen = HashSet::new();
            root_fields(
                document,
                &operation.node.selection_set.node,
                &mut seen,
                &mut fields,
            );
            let generations = fields
                .iter()
                .filter(|f| GENERATION_FIELDS.contains(f))
                .count();
            let others: Vec<&&str> = fields.iter().filter(|f| **f != "__typename").collect();
            if generations > 0 {
                Charge::Class(
                    LimitClass::Generation,
                    u32::try_from(generations).unwrap_or(u32::MAX),
                )
            } else if !others.is_empty() && others.iter().all(|f| EXEMPT_FIELDS.contains(f)) {
                Charge::Exempt
            } else {
                Charge::Class(LimitClass::Mutation, 1)
            }
        }
    }
}

/// The names of the root fields, through inline fragments and fragment spreads (each fragment
/// followed once, so cycles end).
fn root_fields<'d>(
    document: &'d ExecutableDocument,
    set: &'d SelectionSet,
    seen: &mut HashSet<&'d str>,
    out: &mut Vec<&'d str>,
) {
    for item in &set.items {
        match &item.node {
            Selection::Field(field) => out.push(field.node.name.node.as_str()),
            Selection::InlineFragment(inline) => {
                root_fields(document, &inline.node.selection_set.node, seen, out);
            }
            Selection::FragmentSpread(spread) => {
                let name = spread.node.fragment_name.node.as_str();
                if seen.insert(name)
                    && let Some(fragment) = document.fragments.get(name)
                {
                    root_fields(document, &fragment.node.selection_set.node, seen, out);
                }
            }
        }
    }
}

/// Whose limits a request spends: its user, or its client IP when anonymous (or when its
/// token was refused).
pub fn subject(auth: &Auth, client: &ClientInfo) -> String {
    match auth {
        Auth::Viewer(viewer) => format!("user:{}", viewer.user_id),
        _ => format!("ip:{}", client.ip_key()),
    }
}

/// Spends the class cells of every operation of one request, class by class (generations
/// first), before any of them runs. The first class refused answers for the request.
pub async fn admit(
    limiter: &Limiter,
    subject: &str,
    charges: impl IntoIterator<Item = (LimitClass, u32)>,
) -> AppResult<()> {
    let mut totals = [
        (LimitClass::Generation, 0u32),
        (LimitClass::Mutation, 0),
        (LimitClass::Query, 0),
    ];
    for (class, cells) in charges {
        match totals.iter_mut().find(|(c, _)| *c == class) {
            Some((_, total)) => *total = total.saturating_add(cells),
            None => limiter.check_n(class, subject, cells).await?,
        }
    }
    for (class, cells) in totals {
        limiter.check_n(class, subject, cells).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge_of(query: &str) -> Charge {
        let mut request = async_graphql::Request::new(query);
        charge(&mut request, 16_384)
    }

    #[test]
    fn operations_are_classified() {
        use LimitClass::*;
        assert_eq!(charge_of("{ me { id } }"), Charge::Class(Query, 1));
        assert_eq!(charge_of("query Q { me { id } }"), Charge::Class(Query, 1));
        assert_eq!(charge_of("not graphql"), Charge::Class(Query, 1));
        assert_eq!(
            charge_of("subscription { messageStream(messageId: 1) { __typename } }"),
            Charge::Subscription
        );
        assert_eq!(
            charge_of("mutation { createWorkspace(input: {name: \"a\"}) { id } }"),
            Charge::Class(Mutation, 1)
        );
        assert_eq!(
            charge_of("mutation { register(input: {}) { accessToken } }"),
            Charge::Class(Mutation, 1)
        );
        assert_eq!(
            charge_of("mutation { login(input: {}) { accessToken } __typename }"),
            Charge::Exempt
        );
        assert_eq!(
            charge_of("mutation { requestPasswordReset(email: \"a\") resetPassword(input: {}) }"),
            Charge::Exempt
        );
        assert_eq!(
            charge_of("mutation { login(input: {}) { accessToken } logout(refreshToken: \"x\") }"),
            Charge::Class(Mutation, 1)
        );
        assert_eq!(
            charge_of("mutation { sendMessage(input: {}) { userMessage { id } } }"),
            Charge::Class(Generation, 1)
        );
        assert_eq!(
            charge_of(
                "mutation { a: sendMessage(input: {}) { __typename } b: editMessage(input: {}) { __typename }
                 ... on Mutation { c: regenerateMessage(input: {}) { id } } ...F }
                 fragment F on Mutation { d: sendMessage(input: {}) { __typename } ...F }"
            ),
            Charge::Class(Generation, 4)
        );
        assert_eq!(
            charge_of("mutation A { sendMessage(input: {}) { __typename } } query B { me { id } }"),
            Charge::Class(Query, 1),
            "no operation selected"
        );
        let mut request = async_graphql::Request::new(
            "mutation A { sendMessage(input: {}) { __typename } } query B { me { id } }",
        )
        .operation_name("A");
        assert_eq!(charge(&mut request, 16_384), Charge::Class(Generation, 1));
        let mut long =
            async_graphql::Request::new("mutation { sendMessage(input: {}) { __typename } }");
        assert_eq!(charge(&mut long, 10), Charge::Class(Query, 1));
    }
}
