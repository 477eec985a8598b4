// Mounts GraphiQL for Colloquy. Kept out of index.html so that a strict
// Content-Security-Policy (script-src 'self') does not break the page.
(function () {
  "use strict";

  var loc = window.location;
  var wsScheme = loc.protocol === "https:" ? "wss:" : "ws:";

  // HTTP goes to POST /graphql; subscriptions use graphql-ws (subprotocol
  // graphql-transport-ws) at ws(s)://<same host>/graphql. The graphql-ws
  // client is bundled inside graphiql.min.js.
  //
  // Headers typed in GraphiQL's "Headers" editor are passed to the fetcher on
  // every run. createFetcher merges them into the HTTP request headers and,
  // for a subscription, opens a new graphql-ws client whose connection_init
  // payload is {...wsConnectionParams, ...headers}, e.g.
  // {"Authorization": "Bearer <token>"}. So a changed token applies to the
  // next subscription without reloading the page.
  var fetcher = GraphiQL.createFetcher({
    url: loc.origin + "/graphql",
    subscriptionUrl: wsScheme + "//" + loc.host + "/graphql",
  });

  var defaultQuery = [
    "# Welcome to Colloquy's GraphiQL.",
    "#",
    "# To authenticate, put this in the Headers tab:",
    '#   {"Authorization": "Bearer <token>"}',
    "# It is sent with every HTTP request and in the",
    "# connection_init of subscription WebSockets.",
    "",
    "{",
    "  __typename",
    "}",
    "",
  ].join("\n");

  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: defaultQuery,
      defaultEditorToolsVisibility: "headers",
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
    }),
  );
})();
