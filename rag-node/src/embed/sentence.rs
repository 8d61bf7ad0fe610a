//! What makes a sentence-transformers model directory more than its transformer: how the
//! token vectors become one (`modules.json` → the Pooling module's `config.json`), whether the
//! result is normalized (a `Normalize` module), the window (`sentence_bert_config.json`'s
//! `max_seq_length`, or, as sentence-transformers ≥ 5 writes it, `tokenizer_config.json`'s
//! `model_max_length`) and the prompts put before queries and passages
//! (`config_sentence_transformers.json`'s `prompts`, or the node's configuration; E5-style
//! models want `"query: "` and `"passage: "`).
//!
//! Each of these changes the vectors, so each is part of the model id: two directories with
//! the same weights but another pooling are different models to the index.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of the text's token vectors.
    Mean,
    /// The first token's vector (`[CLS]` / `<s>`).
    Cls,
    /// The element-wise maximum over the text's token vectors.
    Max,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SentenceConfig {
    pub pooling: Pooling,
    pub normalize: bool,
    /// The window in tokens, special tokens included (`None`: 256, bounded by the model).
    pub max_seq_length: Option<usize>,
    pub query_prefix: String,
    pub passage_prefix: String,
}

impl Default for SentenceConfig {
    /// What a directory without sentence-transformers files gets: the all-MiniLM-L6-v2 recipe
    /// (mean pooling, normalized), which every earlier version of this node assumed.
    fn default() -> Self {
        SentenceConfig {
            pooling: Pooling::Mean,
            normalize: true,
            max_seq_length: None,
            query_prefix: String::new(),
            passage_prefix: String::new(),
        }
    }
}

#[derive(Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// Both spellings: `pooling_mode` (sentence-transformers ≥ 5) or one flag per mode (before).
#[derive(Deserialize, Default)]
#[serde(default)]
struct PoolingFile {
    pooling_mode: Option<String>,
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
    pooling_mode_weightedmean_tokens: bool,
    pooling_mode_lasttoken: bool,
    include_prompt: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StConfigFile {
    prompts: std::collections::BTreeMap<String, String>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl SentenceConfig {
    /// Reads the sentence-transformers files of `dir` (each optional; see [`Default`]).
    pub fn read(dir: &Path) -> anyhow::Result<SentenceConfig> {
        let mut cfg = SentenceConfig::default();
        let modules: Option<Vec<Module>> = read_json(&dir.join("modules.json"))?;
        let pooling_dir = match &modules {
            Some(modules) => {
                cfg.normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
                let pooling = modules.iter().find(|m| m.kind.ends_with(".Pooling"));
                let Some(p) = pooling else {
                    bail!(
                        "modules.json lists no Pooling module: the model gives no sentence vector"
                    );
                };
                if let Some(other) = modules.iter().find(|m| {
                    !m.kind.ends_with(".Transformer")
                        && !m.kind.ends_with(".Pooling")
                        && !m.kind.ends_with(".Normalize")
                }) {
                    bail!("unsupported sentence-transformers module {}", other.kind);
                }
                Some(dir.join(&p.path))
            }
            None => Some(dir.join("1_Pooling")),
        };
        if let Some(p) = pooling_dir {
            if let Some(file) = read_json::<PoolingFile>(&p.join("config.json"))? {
                cfg.pooling = pooling_of(&file)?;
            }
        }
        #[derive(Deserialize)]
        struct SbertFile {
            max_seq_length: Option<usize>,
        }
        #[derive(Deserialize)]
        struct TokenizerConfigFile {
            // A float in some files (1e30 for "no limit"): read loosely.
            model_max_length: Option<f64>,
        }
        if let Some(f) = read_json::<SbertFile>(&dir.join("sentence_bert_config.json"))? {
            cfg.max_seq_length = f.max_seq_length;
        }
        if cfg.max_seq_length.is_none() {
            if let Some(f) = read_json::<TokenizerConfigFile>(&dir.join("tokenizer_config.json"))? {
                cfg.max_seq_length = f
                    .model_max_length
                    .filter(|n| *n >= 1.0 && *n < 1e9)
                    .map(|n| n as usize);
            }
        }
        if let Some(f) = read_json::<StConfigFile>(&dir.join("config_sentence_transformers.json"))?
        {
            if let Some(q) = f.prompts.get("query") {
                cfg.query_prefix = q.clone();
            }
            // sentence-transformers names the passage prompt either way.
            if let Some(p) = f
                .prompts
                .get("passage")
                .or_else(|| f.prompts.get("document"))
            {
                cfg.passage_prefix = p.clone();
            }
        }
        Ok(cfg)
    }

    /// A short digest of everything here that changes a vector, given the window actually
    /// used; empty for the recipe every earlier version assumed (so their indexes stay valid).
    pub fn fingerprint(&self, window: usize) -> String {
        let legacy = SentenceConfig::default();
        if self.pooling == legacy.pooling
            && self.normalize == legacy.normalize
            && window == 256
            && self.query_prefix.is_empty()
            && self.passage_prefix.is_empty()
        {
            return String::new();
        }
        let text = format!(
            "pooling={};normalize={};window={window};query={:?};passage={:?}",
            self.pooling.as_str(),
            self.normalize,
            self.query_prefix,
            self.passage_prefix
        );
        hex::encode(&Sha256::digest(text.as_bytes())[..4])
    }
}

fn pooling_of(f: &PoolingFile) -> anyhow::Result<Pooling> {
    if let Some(mode) = &f.pooling_mode {
        if f.include_prompt == Some(false) {
            bail!("pooling that leaves out the prompt is not supported");
        }
        return match mode.as_str() {
            "mean" | "mean_tokens" => Ok(Pooling::Mean),
            "cls" | "cls_token" => Ok(Pooling::Cls),
            "max" | "max_tokens" => Ok(Pooling::Max),
            other => bail!("unsupported pooling {other:?} (supported: mean, cls or max)"),
        };
    }
    if f.pooling_mode_mean_sqrt_len_tokens
        || f.pooling_mode_weightedmean_tokens
        || f.pooling_mode_lasttoken
    {
        bail!("unsupported pooling (supported: mean, cls or max tokens)");
    }
    if f.include_prompt == Some(false) {
        bail!("pooling that leaves out the prompt is not supported");
    }
    match (
        f.pooling_mode_mean_tokens,
        f.pooling_mode_cls_token,
        f.pooling_mode_max_tokens,
    ) {
        (true, false, false) => Ok(Pooling::Mean),
        (false, true, false) => Ok(Pooling::Cls),
        (false, false, true) => Ok(Pooling::Max),
        (false, false, false) => bail!("the Pooling module selects no pooling mode"),
        _ => bail!("concatenated pooling modes are not supported (choose one of mean, cls, max)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = d.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    const MODULES: &str = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
        {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#;

    #[test]
    fn reads_pooling_normalization_window_and_prompts() {
        let d = dir(&[
            ("modules.json", MODULES),
            (
                "1_Pooling/config.json",
                r#"{"pooling_mode_cls_token": true}"#,
            ),
            ("sentence_bert_config.json", r#"{"max_seq_length": 512}"#),
            (
                "config_sentence_transformers.json",
                r#"{"prompts": {"query": "query: ", "document": "passage: "}}"#,
            ),
        ]);
        let c = SentenceConfig::read(d.path()).unwrap();
        assert_eq!(c.pooling, Pooling::Cls);
        assert!(!c.normalize, "no Normalize module");
        assert_eq!(c.max_seq_length, Some(512));
        assert_eq!(
            (c.query_prefix.as_str(), c.passage_prefix.as_str()),
            ("query: ", "passage: ")
        );
        assert_eq!(c.fingerprint(512).len(), 8);
    }

    #[test]
    fn reads_what_sentence_transformers_5_writes() {
        let d = dir(&[
            (
                "modules.json",
                r#"[{"path":"","type":"sentence_transformers.base.modules.transformer.Transformer"},
                    {"path":"1_Pooling","type":"sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
                    {"path":"2_Normalize","type":"sentence_transformers.base.modules.normalize.Normalize"}]"#,
            ),
            (
                "1_Pooling/config.json",
                r#"{"embedding_dimension": 32, "pooling_mode": "max", "include_prompt": true}"#,
            ),
            (
                "sentence_bert_config.json",
                r#"{"transformer_task": "feature-extraction"}"#,
            ),
            ("tokenizer_config.json", r#"{"model_max_length": 24}"#),
        ]);
        let c = SentenceConfig::read(d.path()).unwrap();
        assert_eq!(
            (c.pooling, c.normalize, c.max_seq_length),
            (Pooling::Max, true, Some(24))
        );
    }

    #[test]
    fn a_bare_directory_gets_the_recipe_earlier_versions_assumed() {
        let d = dir(&[]);
        let c = SentenceConfig::read(d.path()).unwrap();
        assert_eq!(c, SentenceConfig::default());
        assert_eq!(c.fingerprint(256), "", "the default model keeps its id");
        assert_ne!(c.fingerprint(128), "", "another window is another model");
    }

    #[test]
    fn pooling_the_node_cannot_do_is_refused_at_load() {
        for pooling in [
            r#"{"pooling_mode_mean_sqrt_len_tokens": true}"#,
            r#"{"pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": true}"#,
            r#"{"pooling_mode_lasttoken": true}"#,
            r#"{}"#,
            r#"{"pooling_mode": "lasttoken"}"#,
            r#"{"pooling_mode": "mean", "include_prompt": false}"#,
        ] {
            let d = dir(&[
                ("modules.json", MODULES),
                ("1_Pooling/config.json", pooling),
            ]);
            assert!(SentenceConfig::read(d.path()).is_err(), "{pooling}");
        }
        let d = dir(&[(
            "modules.json",
            r#"[{"path":"","type":"sentence_transformers.models.Transformer"},
                {"path":"2_Dense","type":"sentence_transformers.models.Dense"}]"#,
        )]);
        assert!(SentenceConfig::read(d.path()).is_err());
    }

    #[test]
    fn every_setting_changes_the_fingerprint() {
        let base = SentenceConfig {
            pooling: Pooling::Cls,
            ..SentenceConfig::default()
        };
        let variants = [
            SentenceConfig {
                pooling: Pooling::Max,
                ..base.clone()
            },
            SentenceConfig {
                normalize: false,
                ..base.clone()
            },
            SentenceConfig {
                query_prefix: "query: ".into(),
                ..base.clone()
            },
            SentenceConfig {
                passage_prefix: "passage: ".into(),
                ..base.clone()
            },
        ];
        let mut seen = std::collections::HashSet::from([base.fingerprint(256)]);
        seen.insert(base.fingerprint(128));
        for v in &variants {
            assert!(seen.insert(v.fingerprint(256)), "{v:?}");
        }
    }
}
