//! The model catalog: providers (wire format, base URL, key) and models (upstream name,
//! context window, output limit, prices). Built-in entries, extended or overridden by the
//! TOML or JSON file named by `MODEL_CATALOG_FILE`:
//!
//! ```toml
//! [[providers]]
//! name = "vllm"
//! wire = "openai"                 # openai | anthropic | gemini
//! base_url = "http://10.0.0.5:8000/v1"
//! api_key_env = "VLLM_API_KEY"    # optional
//! needs_key = false
//!
//! [[models]]
//! id = "vllm/qwen2.5-7b"
//! provider = "vllm"
//! upstream = "Qwen/Qwen2.5-7B-Instruct"
//! display_name = "Qwen 2.5 7B (vLLM)"
//! context_window = 32768
//! max_output_tokens = 4096
//! input_usd_per_mtok = 0.0
//! output_usd_per_mtok = 0.0
//! ```
//!
//! An entry with an existing `id` (or provider `name`) replaces it; `disabled = true`
//! removes it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::config::Secret;
use crate::llm::tokens::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wire {
    Openai,
    Anthropic,
    Gemini,
    /// In process (`local/echo`).
    Local,
}

impl Wire {
    pub fn as_str(self) -> &'static str {
        match self {
            Wire::Openai => "openai",
            Wire::Anthropic => "anthropic",
            Wire::Gemini => "gemini",
            Wire::Local => "local",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProviderSpec {
    pub name: String,
    pub wire: Wire,
    #[serde(default)]
    pub base_url: String,
    /// The environment variable holding the server's key for this provider.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "yes")]
    pub needs_key: bool,
    #[serde(default)]
    pub disabled: bool,
    /// The server's key, read from `api_key_env` at start.
    #[serde(skip)]
    pub api_key: Option<Secret>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelSpec {
    pub id: String,
    pub provider: String,
    pub upstream: String,
    #[serde(default)]
    pub display_name: String,
    pub context_window: u32,
    pub max_output_tokens: u32,
    #[serde(default)]
    pub input_usd_per_mtok: Option<f64>,
    #[serde(default)]
    pub output_usd_per_mtok: Option<f64>,
    /// Overrides the tokenizer guessed from the provider and model name.
    #[serde(default)]
    pub tokenizer: Option<Tokenizer>,
    #[serde(default)]
    pub disabled: bool,
}

impl ModelSpec {
    /// Cost of a generation in micro-USD (millionths of a dollar), from the catalog prices.
    pub fn cost_micro_usd(&self, prompt_tokens: u32, completion_tokens: u32) -> i64 {
        let input = self.input_usd_per_mtok.unwrap_or(0.0) * f64::from(prompt_tokens);
        let output = self.output_usd_per_mtok.unwrap_or(0.0) * f64::from(completion_tokens);
        // USD per million tokens × tokens = micro-USD.
        (input + output).round() as i64
    }
}

#[derive(Debug, Default, Deserialize)]
struct CatalogFile {
    #[serde(default)]
    providers: Vec<ProviderSpec>,
    #[serde(default)]
    models: Vec<ModelSpec>,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    providers: BTreeMap<String, ProviderSpec>,
    /// In listing order: built-ins first, then the file's additions.
    models: Vec<ModelSpec>,
}

fn provider(name: &str, wire: Wire, base_url: &str, key_env: Option<&str>) -> ProviderSpec {
    ProviderSpec {
        name: name.to_owned(),
        wire,
        base_url: base_url.to_owned(),
        api_key_env: key_env.map(str::to_owned),
        needs_key: key_env.is_some(),
        disabled: false,
        api_key: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn model(
    id: &str,
    provider: &str,
    upstream: &str,
    display_name: &str,
    context_window: u32,
    max_output_tokens: u32,
    input: f64,
    output: f64,
) -> ModelSpec {
    ModelSpec {
        id: id.to_owned(),
        provider: provider.to_owned(),
        upstream: upstream.to_owned(),
        display_name: display_name.to_owned(),
        context_window,
        max_output_tokens,
        input_usd_per_mtok: Some(input),
        output_usd_per_mtok: Some(output),
        tokenizer: None,
        disabled: false,
    }
}

impl Catalog {
    /// The built-in providers and models. Prices are USD per million tokens.
    pub fn builtin() -> Catalog {
        let providers = [
            provider(
                "openai",
                Wire::Openai,
                "https://api.openai.com/v1",
                Some("OPENAI_API_KEY"),
            ),
            provider(
                "anthropic",
                Wire::Anthropic,
                "https://api.anthropic.com",
                Some("ANTHROPIC_API_KEY"),
            ),
            provider(
                "google",
                Wire::Gemini,
                "https://generativelanguage.googleapis.com",
                Some("GEMINI_API_KEY"),
            ),
            provider(
                "openrouter",
                Wire::Openai,
                "https://openrouter.ai/api/v1",
                Some("OPENROUTER_API_KEY"),
            ),
            provider("local", Wire::Local, "", None),
        ];
        let models = vec![
            model(
                "openai/gpt-4o-mini",
                "openai",
                "gpt-4o-mini",
                "GPT-4o mini",
                128_000,
                16_384,
                0.15,
                0.60,
            ),
            model(
                "openai/gpt-4o",
                "openai",
                "gpt-4o",
                "GPT-4o",
                128_000,
                16_384,
                2.50,
                10.00,
            ),
            model(
                "openai/gpt-4.1-mini",
                "openai",
                "gpt-4.1-mini",
                "GPT-4.1 mini",
                1_047_576,
                32_768,
                0.40,
                1.60,
            ),
            model(
                "openai/gpt-4.1",
                "openai",
                "gpt-4.1",
                "GPT-4.1",
                1_047_576,
                32_768,
                2.00,
                8.00,
            ),
            model(
                "anthropic/claude-3-5-haiku-latest",
                "anthropic",
                "claude-3-5-haiku-latest",
                "Claude 3.5 Haiku",
                200_000,
                8_192,
                0.80,
                4.00,
            ),
            model(
                "anthropic/claude-sonnet-4-0",
                "anthropic",
                "claude-sonnet-4-0",
                "Claude Sonnet 4",
                200_000,
                64_000,
                3.00,
                15.00,
            ),
            model(
                "google/gemini-2.0-flash",
                "google",
                "gemini-2.0-flash",
                "Gemini 2.0 Flash",
                1_048_576,
                8_192,
                0.10,
                0.40,
            ),
            model(
                "google/gemini-2.5-flash",
                "google",
                "gemini-2.5-flash",
                "Gemini 2.5 Flash",
                1_048_576,
                65_536,
                0.30,
                2.50,
            ),
            model(
                "openrouter/openai/gpt-4o-mini",
                "openrouter",
                "openai/gpt-4o-mini",
                "GPT-4o mini (OpenRouter)",
                128_000,
                16_384,
                0.15,
                0.60,
            ),
            model(
                "openrouter/meta-llama/llama-3.3-70b-instruct",
                "openrouter",
                "meta-llama/llama-3.3-70b-instruct",
                "Llama 3.3 70B (OpenRouter)",
                131_072,
                8_192,
                0.13,
                0.40,
            ),
            model(
                "local/echo",
                "local",
                "echo",
                "Echo (local, for development)",
                32_768,
                4_096,
                0.0,
                0.0,
            ),
        ];
        Catalog {
            providers: providers.into_iter().map(|p| (p.name.clone(), p)).collect(),
            models,
        }
    }

    /// The built-ins merged with `file` (TOML, or JSON when it ends in `.json`), then keys
    /// and base-URL overrides read through `lookup`: `<api_key_env>` for keys, and
    /// `<NAME>_BASE_URL` (e.g. `OPENAI_BASE_URL`) for the built-in providers' addresses.
    pub fn load(
        file: Option<&Path>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Catalog> {
        let mut catalog = Catalog::builtin();
        for p in catalog.providers.values_mut() {
            let env = format!("{}_BASE_URL", p.name.to_uppercase());
            if let Some(url) = lookup(&env).filter(|u| !u.is_empty()) {
                p.base_url = url;
            }
        }
        // Gemini's key is often called GOOGLE_API_KEY.
        if lookup("GEMINI_API_KEY").is_none_or(|k| k.is_empty())
            && let Some(p) = catalog.providers.get_mut("google")
        {
            p.api_key_env = Some("GOOGLE_API_KEY".to_owned());
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read MODEL_CATALOG_FILE {}", path.display()))?;
            let parsed: CatalogFile = if path.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text).with_context(|| {
                    format!("MODEL_CATALOG_FILE {} is not valid JSON", path.display())
                })?
            } else {
                toml::from_str(&text).with_context(|| {
                    format!("MODEL_CATALOG_FILE {} is not valid TOML", path.display())
                })?
            };
            catalog.merge(parsed)?;
        }
        for p in catalog.providers.values_mut() {
            p.api_key = p
                .api_key_env
                .as_deref()
                .and_then(lookup)
                .filter(|k| !k.is_empty())
                .map(Secret::new);
        }
        Ok(catalog)
    }

    fn merge(&mut self, file: CatalogFile) -> anyhow::Result<()> {
        for p in file.providers {
            if p.disabled {
                self.providers.remove(&p.name);
            } else {
                if p.wire != Wire::Local && p.base_url.is_empty() {
                    bail!(
                        "provider `{}` in MODEL_CATALOG_FILE needs a base_url",
                        p.name
                    );
                }
                self.providers.insert(p.name.clone(), p);
            }
        }
        for m in file.models {
            let existing = self.models.iter().position(|x| x.id == m.id);
            match (existing, m.disabled) {
                (Some(i), true) => {
                    self.models.remove(i);
                }
                (None, true) => {}
                (Some(i), false) => self.models[i] = m,
                (None, false) => self.models.push(m),
            }
        }
        self.models
            .retain(|m| self.providers.contains_key(&m.provider));
        for m in &self.models {
            if m.context_window == 0
                || m.max_output_tokens == 0
                || m.max_output_tokens > m.context_window
            {
                bail!(
                    "model `{}`: context_window and max_output_tokens must be positive, output within the window",
                    m.id
                );
            }
        }
        Ok(())
    }

    pub fn models(&self) -> &[ModelSpec] {
        &self.models
    }

    pub fn model(&self, id: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.id == id)
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderSpec> {
        self.providers.get(name)
    }

    pub fn providers(&self) -> impl Iterator<Item = &ProviderSpec> {
        self.providers.values()
    }

    /// The tokenizer for a model: its own setting, else the family's.
    pub fn tokenizer(&self, model: &ModelSpec) -> Tokenizer {
        model.tokenizer.unwrap_or_else(|| {
            let wire = self
                .provider(&model.provider)
                .map(|p| p.wire.as_str())
                .unwrap_or_default();
            Tokenizer::for_model(wire, &model.upstream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn builtins_and_env() {
        let env: HashMap<&str, &str> = HashMap::from([
            ("OPENAI_API_KEY", "sk-test"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
        ]);
        let c = Catalog::load(None, &|k| env.get(k).map(|v| v.to_string())).expect("load");
        let openai = c.provider("openai").expect("openai");
        assert_eq!(openai.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(openai.api_key.as_ref().map(Secret::expose), Some("sk-test"));
        assert!(
            c.provider("anthropic")
                .expect("anthropic")
                .api_key
                .is_none()
        );
        let echo = c.model("local/echo").expect("echo");
        assert_eq!(c.tokenizer(echo), Tokenizer::Cl100k);
        assert_eq!(
            c.tokenizer(c.model("openai/gpt-4o-mini").expect("m")),
            Tokenizer::O200k
        );
        // $0.15 and $0.60 per million: 1M prompt + 1M completion = $0.75.
        let mini = c.model("openai/gpt-4o-mini").expect("m");
        assert_eq!(mini.cost_micro_usd(1_000_000, 1_000_000), 750_000);
        assert_eq!(mini.cost_micro_usd(1000, 500), 450);
    }

    #[test]
    fn a_file_adds_overrides_and_removes() {
        let dir = std::env::temp_dir().join(format!("catalog-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let toml_path = dir.join("models.toml");
        std::fs::write(
            &toml_path,
            r#"
[[providers]]
name = "vllm"
wire = "openai"
base_url = "http://10.0.0.5:8000/v1"
api_key_env = "VLLM_KEY"

[[models]]
id = "vllm/qwen"
provider = "vllm"
upstream = "Qwen/Qwen2.5-7B-Instruct"
context_window = 32768
max_output_tokens = 4096

[[models]]
id = "openai/gpt-4o"
disabled = true
provider = "openai"
upstream = "gpt-4o"
context_window = 1
max_output_tokens = 1
"#,
        )
        .expect("write");
        let c = Catalog::load(Some(&toml_path), &|k| {
            (k == "VLLM_KEY").then(|| "k".to_owned())
        })
        .expect("load");
        assert!(c.model("vllm/qwen").is_some());
        assert!(c.model("openai/gpt-4o").is_none());
        assert!(
            c.provider("vllm")
                .and_then(|p| p.api_key.as_ref())
                .is_some()
        );

        let json_path = dir.join("models.json");
        std::fs::write(&json_path, r#"{"models":[{"id":"local/echo","provider":"local","upstream":"echo","context_window":100,"max_output_tokens":10}]}"#).expect("write");
        let c = Catalog::load(Some(&json_path), &|_| None).expect("load");
        assert_eq!(c.model("local/echo").map(|m| m.context_window), Some(100));

        std::fs::write(&json_path, "{ nope").expect("write");
        let err = Catalog::load(Some(&json_path), &|_| None).expect_err("bad file");
        assert!(err.to_string().contains("MODEL_CATALOG_FILE"), "{err}");
    }
}
