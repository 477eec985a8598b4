//! Self-hosted GraphiQL.
//!
//! async-graphql's `GraphiQLSource` renders a page that loads React, GraphiQL
//! and its stylesheet from a public CDN. On an offline or firewalled install
//! those requests fail and the page stays blank. To make GraphiQL work
//! anywhere the server runs, the production builds of GraphiQL and React are
//! vendored in `src/graphql/graphiql/` (versions and licenses in
//! `LICENSES.md` there) and compiled into the binary with `include_bytes!`.
//! Nothing is read from the filesystem at run time and the page makes no
//! request to any other host: its scripts and stylesheet (fonts included, as
//! `data:` URIs) come from `/graphiql/assets/{file}`, queries go to `/graphql`
//! and subscriptions to `ws(s)://<same host>/graphql` (graphql-transport-ws).
//!
//! Headers typed in GraphiQL's "Headers" editor, such as
//! `{"Authorization": "Bearer <token>"}`, are sent with every HTTP request and
//! as the `connection_init` payload of each subscription's WebSocket.
//!
//! Mounted as:
//!
//! ```text
//! .route("/graphiql", get(graphiql::page))
//! .route("/graphiql/assets/{file}", get(graphiql::asset))
//! ```

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// The GraphiQL page.
const INDEX_HTML: &str = include_str!("graphiql/index.html");

/// `Cache-Control` for the assets: their names carry no version, so keep the
/// lifetime short enough that an upgrade is picked up within a day.
const ASSET_CACHE_CONTROL: &str = "public, max-age=86400";

const JAVASCRIPT: &str = "application/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// One file served under `/graphiql/assets/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// Every file the page loads. Anything else is a 404.
const ASSETS: &[Asset] = &[
    Asset {
        name: "graphiql.min.js",
        content_type: JAVASCRIPT,
        body: include_bytes!("graphiql/graphiql.min.js"),
    },
    Asset {
        name: "graphiql.min.css",
        content_type: CSS,
        body: include_bytes!("graphiql/graphiql.min.css"),
    },
    Asset {
        name: "react.production.min.js",
        content_type: JAVASCRIPT,
        body: include_bytes!("graphiql/react.production.min.js"),
    },
    Asset {
        name: "react-dom.production.min.js",
        content_type: JAVASCRIPT,
        body: include_bytes!("graphiql/react-dom.production.min.js"),
    },
    Asset {
        name: "init.js",
        content_type: JAVASCRIPT,
        body: include_bytes!("graphiql/init.js"),
    },
];

/// `GET /graphiql`: the GraphiQL page.
///
/// Served with `Cache-Control: no-cache` so that a new release's page (and so
/// its asset list) is always revalidated.
pub async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(INDEX_HTML))
}

/// `GET /graphiql/assets/{file}`: one of the vendored GraphiQL assets, or 404.
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|asset| asset.name == file) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, ASSET_CACHE_CONTROL),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            asset.body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn page_is_html_and_not_cached() {
        let response = page().await.into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
    }

    #[test]
    fn page_loads_every_asset_and_nothing_external() {
        for asset in ASSETS {
            let src = format!("/graphiql/assets/{}", asset.name);
            assert!(
                asset.name.ends_with(".css") || INDEX_HTML.contains(&src),
                "index.html does not load {src}"
            );
        }
        assert!(INDEX_HTML.contains("/graphiql/assets/graphiql.min.css"));
        assert!(!INDEX_HTML.contains("http://"));
        assert!(!INDEX_HTML.contains("https://"));
        assert!(!INDEX_HTML.contains("//cdn"));
    }

    #[tokio::test]
    async fn known_assets_have_content_type_and_cache_control() {
        for (name, content_type) in [
            ("graphiql.min.js", JAVASCRIPT),
            ("graphiql.min.css", CSS),
            ("react.production.min.js", JAVASCRIPT),
            ("react-dom.production.min.js", JAVASCRIPT),
            ("init.js", JAVASCRIPT),
        ] {
            let response = asset(Path(name.to_owned())).await;
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], content_type);
            assert_eq!(
                response.headers()[header::CACHE_CONTROL],
                ASSET_CACHE_CONTROL
            );
        }
    }

    #[tokio::test]
    async fn unknown_assets_are_not_found() {
        for name in ["", "index.html", "../graphiql.rs", "LICENSES.md", "x.js"] {
            let response = asset(Path(name.to_owned())).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{name:?}");
        }
    }
}
