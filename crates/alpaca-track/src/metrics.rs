//! `metrics.jsonl`: one JSON object per logged event, appended and flushed immediately.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// Appends events to a run's metrics log. Every event gets `time` (seconds since the epoch)
/// and `event` (what kind of record it is) so the file can be read back without a schema.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens (creating if needed) `path` for appending; a resumed run continues the same file.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs one event. `fields` must serialise to a JSON object; its keys are merged in.
    pub fn log(&mut self, event: &str, fields: impl serde::Serialize) -> std::io::Result<()> {
        let mut record = Map::new();
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        record.insert("time".into(), Value::from(time));
        record.insert("event".into(), Value::from(event));
        match serde_json::to_value(fields).map_err(std::io::Error::other)? {
            Value::Object(map) => record.extend(map),
            Value::Null => {}
            other => {
                record.insert("value".into(), other);
            }
        }
        let mut line =
            serde_json::to_string(&Value::Object(record)).map_err(std::io::Error::other)?;
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_one_object_per_line() {
        let dir = std::env::temp_dir().join(format!("alpaca-track-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut log = MetricsLog::open(&path).unwrap();
        log.log("train", serde_json::json!({"step": 1, "loss": 2.5}))
            .unwrap();
        log.log("eval", serde_json::json!({"f1": 0.5})).unwrap();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "train");
        assert_eq!(lines[0]["loss"], 2.5);
        assert_eq!(lines[1]["f1"], 0.5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
