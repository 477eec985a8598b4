//! Integration tests: the real server on loopback, a database per test, real Redis.

mod common;

mod accounts;
mod conversations;
mod limits;
mod server;
mod tokens;
mod websocket;
mod workspaces;
