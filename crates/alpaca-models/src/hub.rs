//! Resolves `--model` to a directory: a path, or a Hugging Face id looked up in the standard
//! local cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`). There is no
//! network access here, so a missing id is an error that says where we looked.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

fn hub_cache() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(home).join("hub"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/huggingface/hub"))
}

/// The snapshot directory of `id` (`org/name`) inside a hub cache: `refs/main` names the
/// revision; otherwise the only (or newest) snapshot is taken.
pub fn snapshot_in(cache: &Path, id: &str) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    if let Ok(revision) = std::fs::read_to_string(repo.join("refs/main")) {
        let dir = snapshots.join(revision.trim());
        if dir.is_dir() {
            return Some(dir);
        }
    }
    let mut entries: Vec<_> = std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .collect();
    entries.sort_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
    entries.last().map(|e| e.path())
}

/// `model` as given by the user: an existing directory, or a hub id in the local cache.
pub fn resolve_model(model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        return Err(ModelError::checkpoint(
            path,
            "expected a model directory (config.json, model.safetensors, tokenizer.json), found a file",
        ));
    }
    let looks_like_id =
        model.split('/').count() == 2 && !model.starts_with('.') && !model.starts_with('/');
    if looks_like_id {
        if let Some(cache) = hub_cache() {
            if let Some(dir) = snapshot_in(&cache, model) {
                return Ok(dir);
            }
            return Err(ModelError::NotFound(format!(
                "model {model:?} is neither a directory nor in the Hugging Face cache at {} \
                 (looked for models--{}/snapshots/); there is no network download: copy the \
                 model directory here and pass its path",
                cache.display(),
                model.replace('/', "--")
            )));
        }
    }
    Err(ModelError::NotFound(format!(
        "model directory {model:?} does not exist"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_snapshot_named_by_refs_main() {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("models--org--tiny");
        std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/old")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        assert_eq!(
            snapshot_in(cache.path(), "org/tiny").unwrap(),
            repo.join("snapshots/abc123")
        );
        assert!(snapshot_in(cache.path(), "org/other").is_none());
    }

    #[test]
    fn missing_model_says_where_it_looked() {
        let error = resolve_model("no-such-org/no-such-model")
            .unwrap_err()
            .to_string();
        assert!(error.contains("no-such-org--no-such-model"), "{error}");
    }
}
