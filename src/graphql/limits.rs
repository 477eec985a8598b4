//! Protection checked on the parsed document, before validation: query size, depth and
//! aliases; and an error-code pass that makes every error carry `extensions.code`.
//!
//! Depth is ours rather than async-graphql's `limit_depth`, which counts introspection too:
//! GraphiQL's own schema query nests type references about 13 deep and would be refused.
//! Introspection subtrees are bounded by the parser's recursion limit and the complexity limit
//! (async-graphql's, set in `build_schema`), and are off in production.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest, NextSubscribe,
};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Response, ServerError, ServerResult, Variables};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

/// Rejects queries longer than `max_query_bytes`, with more than `max_aliases` aliased
/// fields (fragments counted once per spread), or asking for `__schema` / `__type` when
/// introspection is off (async-graphql alone would answer a silent `null`).
#[derive(Clone)]
pub struct QueryLimits {
    pub max_query_bytes: usize,
    pub max_depth: usize,
    pub max_aliases: usize,
    pub introspection: bool,
}

impl ExtensionFactory for QueryLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(self.clone())
    }
}

fn bad_input(message: String) -> ServerError {
    let mut err = ServerError::new(message, None);
    err.extensions
        .get_or_insert_with(Default::default)
        .set("code", "BAD_USER_INPUT");
    err
}

#[async_trait::async_trait]
impl Extension for QueryLimits {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        if query.len() > self.max_query_bytes {
            return Err(bad_input(format!(
                "query is {} bytes; the limit is {}",
                query.len(),
                self.max_query_bytes
            )));
        }
        let document = next.run(ctx, query, variables).await?;
        let depth = query_depth(&document);
        if depth > self.max_depth {
            return Err(bad_input(format!(
                "query is nested {depth} levels deep; the limit is {}",
                self.max_depth
            )));
        }
        let aliases = count_aliases(&document);
        if aliases > self.max_aliases {
            return Err(bad_input(format!(
                "query has {aliases} aliases; the limit is {}",
                self.max_aliases
            )));
        }
        if !self.introspection && selects_introspection(&document) {
            return Err(bad_input(
                "introspection is disabled on this server".to_owned(),
            ));
        }
        Ok(document)
    }
}

/// The deepest field nesting of any operation, fragments expanded; `__schema` and `__type`
/// subtrees do not count.
pub fn query_depth(document: &ExecutableDocument) -> usize {
    fn walk<'d>(
        document: &'d ExecutableDocument,
        set: &'d SelectionSet,
        visiting: &mut Vec<&'d str>,
    ) -> usize {
        set.items
            .iter()
            .map(|selection| match &selection.node {
                Selection::Field(field) => {
                    if matches!(field.node.name.node.as_str(), "__schema" | "__type") {
                        1
                    } else {
                        1 + walk(document, &field.node.selection_set.node, visiting)
                    }
                }
                Selection::InlineFragment(fragment) => {
                    walk(document, &fragment.node.selection_set.node, visiting)
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    match document.fragments.get_key_value(name) {
                        Some((key, fragment)) if !visiting.contains(&name) => {
                            visiting.push(key.as_str());
                            let depth = walk(document, &fragment.node.selection_set.node, visiting);
                            visiting.pop();
                            depth
                        }
                        _ => 0,
                    }
                }
            })
            .max()
            .unwrap_or(0)
    }
    let mut visiting = Vec::new();
    document
        .operations
        .iter()
        .map(|(_, op)| walk(document, &op.node.selection_set.node, &mut visiting))
        .max()
        .unwrap_or(0)
}

/// True when an operation's root selection (through fragments) asks for `__schema` or
/// `__type`. `__typename` is not introspection of the schema and stays allowed.
pub fn selects_introspection(document: &ExecutableDocument) -> bool {
    fn walk<'d>(
        document: &'d ExecutableDocument,
        set: &'d SelectionSet,
        seen: &mut Vec<&'d str>,
    ) -> bool {
        set.items.iter().any(|selection| match &selection.node {
            Selection::Field(field) => {
                matches!(field.node.name.node.as_str(), "__schema" | "__type")
            }
            Selection::InlineFragment(fragment) => {
                walk(document, &fragment.node.selection_set.node, seen)
            }
            Selection::FragmentSpread(spread) => {
                let name = spread.node.fragment_name.node.as_str();
                match document.fragments.get_key_value(name) {
                    Some((key, fragment)) if !seen.contains(&name) => {
                        seen.push(key.as_str());
                        walk(document, &fragment.node.selection_set.node, seen)
                    }
                    _ => false,
                }
            }
        })
    }
    let mut seen = Vec::new();
    document
        .operations
        .iter()
        .any(|(_, op)| walk(document, &op.node.selection_set.node, &mut seen))
}

/// Aliased fields in the document, each fragment counted as often as it is spread.
pub fn count_aliases(document: &ExecutableDocument) -> usize {
    let mut memo: HashMap<&str, usize> = HashMap::new();
    let mut visiting = Vec::new();
    document
        .operations
        .iter()
        .map(|(_, op)| {
            in_selection_set(
                document,
                &op.node.selection_set.node,
                &mut memo,
                &mut visiting,
            )
        })
        .fold(0usize, usize::saturating_add)
}

fn in_selection_set<'d>(
    document: &'d ExecutableDocument,
    set: &'d SelectionSet,
    memo: &mut HashMap<&'d str, usize>,
    visiting: &mut Vec<&'d str>,
) -> usize {
    let mut total = 0usize;
    for selection in &set.items {
        let n = match &selection.node {
            Selection::Field(field) => {
                usize::from(field.node.alias.is_some())
                    + in_selection_set(document, &field.node.selection_set.node, memo, visiting)
            }
            Selection::InlineFragment(fragment) => {
                in_selection_set(document, &fragment.node.selection_set.node, memo, visiting)
            }
            Selection::FragmentSpread(spread) => {
                let name = spread.node.fragment_name.node.as_str();
                if let Some(n) = memo.get(name) {
                    *n
                } else if visiting.contains(&name) {
                    // A cycle; validation rejects it later. Count nothing to terminate.
                    0
                } else if let Some((key, fragment)) = document.fragments.get_key_value(name) {
                    visiting.push(key.as_str());
                    let n = in_selection_set(
                        document,
                        &fragment.node.selection_set.node,
                        memo,
                        visiting,
                    );
                    visiting.pop();
                    memo.insert(key.as_str(), n);
                    n
                } else {
                    0
                }
            }
        };
        total = total.saturating_add(n);
    }
    total
}

/// Gives every error an `extensions.code`. Errors from our resolvers already have one
/// (`AppError`); what is left comes from parsing, validation and input coercion, which are
/// all the client's to fix: BAD_USER_INPUT.
pub struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodes)
    }
}

fn fill_codes(response: &mut Response) {
    for err in &mut response.errors {
        let ext = err.extensions.get_or_insert_with(Default::default);
        if ext.get("code").is_none() {
            ext.set("code", "BAD_USER_INPUT");
        }
    }
}

#[async_trait::async_trait]
impl Extension for ErrorCodes {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        fill_codes(&mut response);
        response
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream)
            .map(|mut response| {
                fill_codes(&mut response);
                response
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aliases(query: &str) -> usize {
        let doc = async_graphql::parser::parse_query(query).expect("parses");
        count_aliases(&doc)
    }

    #[test]
    fn depth_counts_fields_through_fragments_but_not_introspection() {
        let doc = |q: &str| async_graphql::parser::parse_query(q).expect("parses");
        assert_eq!(query_depth(&doc("{ me { id } }")), 2);
        assert_eq!(
            query_depth(&doc(
                "{ me { ...F } } fragment F on User { workspaces { id } }"
            )),
            3
        );
        assert_eq!(
            query_depth(&doc(
                "{ __schema { types { fields { type { ofType { name } } } } } }"
            )),
            1
        );
        assert_eq!(
            query_depth(&doc("{ ...F } fragment F on Query { ...F me { id } }")),
            2
        );
    }

    #[test]
    fn finds_introspection_through_fragments() {
        let doc = |q: &str| async_graphql::parser::parse_query(q).expect("parses");
        assert!(selects_introspection(&doc(
            "{ __schema { types { name } } }"
        )));
        assert!(selects_introspection(&doc(
            "{ ...F } fragment F on Query { __type(name: \"User\") { name } }"
        )));
        assert!(!selects_introspection(&doc("{ __typename me { id } }")));
    }

    #[test]
    fn counts_aliases_through_fragments() {
        assert_eq!(aliases("{ me { id } }"), 0);
        assert_eq!(aliases("{ a: me { id } b: me { x: id } }"), 3);
        assert_eq!(
            aliases("{ ...F ...F } fragment F on Query { a: me { id } b: me { id } }"),
            4
        );
        assert_eq!(
            aliases("{ ...F } fragment F on Query { ...F a: me { id } }"),
            1
        );
    }
}
