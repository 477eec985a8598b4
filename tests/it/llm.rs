//! Models, provider keys and the catalog through the real server.
