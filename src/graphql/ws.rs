//! GraphQL over WebSocket, subprotocol graphql-transport-ws.
