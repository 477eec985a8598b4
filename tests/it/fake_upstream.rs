//! A scripted HTTP server on loopback that speaks the LLM providers' wire formats.
