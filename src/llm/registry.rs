//! `Providers`: the catalog plus one client per provider, built once at start.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::LlmConfig;
use crate::llm::Provider;
use crate::llm::anthropic::AnthropicWire;
use crate::llm::catalog::{Catalog, ModelSpec, ProviderSpec, Wire};
use crate::llm::echo::EchoProvider;
use crate::llm::gemini::GeminiWire;
use crate::llm::openai::OpenAiWire;
use crate::llm::stream::{HttpProvider, StreamSettings};
use crate::llm::tokens::Tokenizer;

pub struct Providers {
    catalog: Catalog,
    clients: HashMap<String, Arc<dyn Provider>>,
}

/// A client for one provider entry.
pub fn client(
    spec: &ProviderSpec,
    settings: &StreamSettings,
    echo_delay: std::time::Duration,
) -> anyhow::Result<Arc<dyn Provider>> {
    // The tokenizer estimates usage when a provider reports none; per-model choice happens
    // in the context builder, and a provider-wide default is close enough here.
    let tokenizer = if spec.wire == Wire::Openai {
        Tokenizer::O200k
    } else {
        Tokenizer::Cl100k
    };
    let settings = settings.clone();
    Ok(match spec.wire {
        Wire::Openai => Arc::new(HttpProvider::new(
            &spec.name,
            &spec.base_url,
            OpenAiWire,
            settings,
            tokenizer,
            spec.needs_key,
        )?),
        Wire::Anthropic => Arc::new(HttpProvider::new(
            &spec.name,
            &spec.base_url,
            AnthropicWire,
            settings,
            tokenizer,
            spec.needs_key,
        )?),
        Wire::Gemini => Arc::new(HttpProvider::new(
            &spec.name,
            &spec.base_url,
            GeminiWire,
            settings,
            tokenizer,
            spec.needs_key,
        )?),
        Wire::Local => Arc::new(EchoProvider::new(echo_delay)),
    })
}

impl Providers {
    pub fn new(config: &LlmConfig) -> anyhow::Result<Providers> {
        let mut clients = HashMap::new();
        for spec in config.catalog.providers() {
            clients.insert(
                spec.name.clone(),
                client(spec, &config.stream, config.echo_delay)?,
            );
        }
        Ok(Providers {
            catalog: config.catalog.clone(),
            clients,
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn model(&self, id: &str) -> Option<&ModelSpec> {
        self.catalog.model(id)
    }

    pub fn client(&self, provider: &str) -> Option<Arc<dyn Provider>> {
        self.clients.get(provider).cloned()
    }

    /// The server's own key for a provider (from the environment).
    pub fn server_key(&self, provider: &str) -> Option<&str> {
        self.catalog
            .provider(provider)
            .and_then(|p| p.api_key.as_ref())
            .map(|k| k.expose())
    }

    /// Whether the provider can serve requests: it needs no key, the server has one, or the
    /// workspace brought its own.
    pub fn available(&self, provider: &str, workspace_has_key: bool) -> bool {
        self.catalog
            .provider(provider)
            .is_some_and(|p| !p.needs_key || p.api_key.is_some() || workspace_has_key)
    }
}
