//! Reading GGUF files (llama.cpp's checkpoint format): typed metadata look-ups and tensors
//! dequantised to f32.
//!
//! The header and the quantised blocks are read by candle's `gguf_file` reader; this module
//! adds what a user needs around it: errors that name the file, the key or tensor and what was
//! expected; a check, before any conversion starts, that every tensor's bytes lie inside the
//! file (a truncated download fails at once, not after minutes of work); and the list of
//! tensor types we convert and test. Converting a llama checkpoint to the Hugging Face layout
//! lives in `gguf::llama`, rebuilding its tokenizer in `gguf::tokenizer`.

pub mod llama;
pub mod tokenizer;

use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

use crate::error::{ModelError, Result};

pub use llama::{convert_to_hf_dir, load_llama, ConversionSummary, GgufLlama};

/// The tensor types we dequantise. candle reads more (the k-quants, Q5_x, BF16), but these are
/// the ones whose block layout our tests check value by value; anything else is refused with
/// an error naming the tensor rather than converted unchecked.
pub const SUPPORTED_TYPES: [GgmlDType; 5] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q8_0,
];

/// The name llama.cpp gives a tensor type (`Q4_1`, not candle's `Q4_1`/`Q4K` debug names).
pub fn type_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

fn supported_list() -> String {
    SUPPORTED_TYPES
        .iter()
        .map(|dtype| type_name(*dtype))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An open GGUF file: its header (metadata and tensor directory) read, tensor data read on
/// demand.
pub struct GgufFile {
    path: PathBuf,
    reader: BufReader<std::fs::File>,
    content: gguf_file::Content,
}

impl GgufFile {
    /// Opens and checks a GGUF file: the magic, the header, and that every tensor's data fits
    /// inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let file_size = file.metadata().map_err(io)?.len();
        let mut reader = BufReader::new(file);
        let mut magic = [0u8; 4];
        let read = read_up_to(&mut reader, &mut magic).map_err(io)?;
        if read < 4 || &magic != b"GGUF" {
            return Err(ModelError::checkpoint(
                path,
                format!(
                    "not a GGUF file: it starts with {:?}, a GGUF file starts with \"GGUF\"",
                    String::from_utf8_lossy(&magic[..read])
                ),
            ));
        }
        reader.seek(SeekFrom::Start(0)).map_err(io)?;
        let content = gguf_file::Content::read(&mut reader)
            .map_err(|error| ModelError::checkpoint(path, header_error_message(&error)))?;
        let file = GgufFile {
            path: path.to_path_buf(),
            reader,
            content,
        };
        file.check_tensor_extents(file_size)?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// Tensor names in file order of their data (so reading them in this order reads the
    /// file front to back).
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<(&String, u64)> = self
            .content
            .tensor_infos
            .iter()
            .map(|(name, info)| (name, info.offset))
            .collect();
        names.sort_by_key(|(name, offset)| (*offset, (*name).clone()));
        names.into_iter().map(|(name, _)| name.clone()).collect()
    }

    /// The tensor's type and shape (outermost dimension first, as in PyTorch: GGUF stores
    /// them innermost first and candle reverses them).
    pub fn tensor_type_and_shape(&self, name: &str) -> Option<(GgmlDType, Vec<usize>)> {
        self.content
            .tensor_infos
            .get(name)
            .map(|info| (info.ggml_dtype, info.shape.dims().to_vec()))
    }

    fn error(&self, message: impl Into<String>) -> ModelError {
        ModelError::checkpoint(&self.path, message)
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.error(format!("metadata key {key} is missing")))
    }

    fn wrong_type(&self, key: &str, expected: &str, value: &Value) -> ModelError {
        self.error(format!(
            "metadata key {key} should be {expected}, found {:?}",
            value.value_type()
        ))
    }

    /// A string value.
    pub fn string(&self, key: &str) -> Result<&str> {
        let value = self.required(key)?;
        match value {
            Value::String(text) => Ok(text),
            other => Err(self.wrong_type(key, "a string", other)),
        }
    }

    pub fn optional_string(&self, key: &str) -> Result<Option<&str>> {
        match self.content.metadata.contains_key(key) {
            true => self.string(key).map(Some),
            false => Ok(None),
        }
    }

    /// A non-negative integer, whatever integer width the writer chose.
    pub fn unsigned(&self, key: &str) -> Result<u64> {
        let value = self.required(key)?;
        let number = match value {
            Value::U8(v) => Some(u64::from(*v)),
            Value::U16(v) => Some(u64::from(*v)),
            Value::U32(v) => Some(u64::from(*v)),
            Value::U64(v) => Some(*v),
            Value::I8(v) => u64::try_from(*v).ok(),
            Value::I16(v) => u64::try_from(*v).ok(),
            Value::I32(v) => u64::try_from(*v).ok(),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        };
        number.ok_or_else(|| self.wrong_type(key, "a non-negative integer", value))
    }

    pub fn optional_unsigned(&self, key: &str) -> Result<Option<u64>> {
        match self.content.metadata.contains_key(key) {
            true => self.unsigned(key).map(Some),
            false => Ok(None),
        }
    }

    /// A float. An f32 is returned as the f64 with the same shortest decimal spelling
    /// (1e-5 stored as f32 reads back as 1e-5, not 9.999999747378752e-6), which is what the
    /// HF config the file was converted from said.
    pub fn float(&self, key: &str) -> Result<f64> {
        let value = self.required(key)?;
        match value {
            Value::F32(v) => Ok(v.to_string().parse().unwrap_or(f64::from(*v))),
            Value::F64(v) => Ok(*v),
            other => Err(self.wrong_type(key, "a float", other)),
        }
    }

    pub fn optional_float(&self, key: &str) -> Result<Option<f64>> {
        match self.content.metadata.contains_key(key) {
            true => self.float(key).map(Some),
            false => Ok(None),
        }
    }

    pub fn optional_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => Err(self.wrong_type(key, "a boolean", other)),
        }
    }

    /// An array of strings.
    pub fn string_array(&self, key: &str) -> Result<Vec<&str>> {
        let value = self.required(key)?;
        let Value::Array(items) = value else {
            return Err(self.wrong_type(key, "an array of strings", value));
        };
        items
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::String(text) => Ok(text.as_str()),
                other => Err(self.error(format!(
                    "metadata key {key}: element {index} should be a string, found {:?}",
                    other.value_type()
                ))),
            })
            .collect()
    }

    /// An array of integers (e.g. token types), as i64.
    pub fn integer_array(&self, key: &str) -> Result<Vec<i64>> {
        let value = self.required(key)?;
        let Value::Array(items) = value else {
            return Err(self.wrong_type(key, "an array of integers", value));
        };
        items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                let number = match item {
                    Value::U8(v) => Some(i64::from(*v)),
                    Value::I8(v) => Some(i64::from(*v)),
                    Value::U16(v) => Some(i64::from(*v)),
                    Value::I16(v) => Some(i64::from(*v)),
                    Value::U32(v) => Some(i64::from(*v)),
                    Value::I32(v) => Some(i64::from(*v)),
                    Value::I64(v) => Some(*v),
                    Value::U64(v) => i64::try_from(*v).ok(),
                    _ => None,
                };
                number.ok_or_else(|| {
                    self.error(format!(
                        "metadata key {key}: element {index} should be an integer, found {:?}",
                        item.value_type()
                    ))
                })
            })
            .collect()
    }

    /// Reads one tensor and dequantises it to f32 on the CPU, in PyTorch's dimension order.
    pub fn dequantize(&mut self, name: &str) -> Result<Tensor> {
        let Some((dtype, _)) = self.tensor_type_and_shape(name) else {
            return Err(self.error(format!("tensor {name} is not in the file")));
        };
        if !SUPPORTED_TYPES.contains(&dtype) {
            return Err(self.error(format!(
                "tensor {name} has type {}, which alpaca does not convert (supported: {})",
                type_name(dtype),
                supported_list()
            )));
        }
        let quantized = self
            .content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|error| {
                self.error(format!(
                    "cannot read tensor {name}: {}",
                    candle_message(&error)
                ))
            })?;
        quantized.dequantize(&Device::Cpu).map_err(|error| {
            self.error(format!(
                "cannot dequantise tensor {name}: {}",
                candle_message(&error)
            ))
        })
    }

    /// Every tensor's bytes must lie inside the file; a truncated download is reported here,
    /// with the first tensor it cuts, instead of half-way through a conversion.
    fn check_tensor_extents(&self, file_size: u64) -> Result<()> {
        for name in self.tensor_names() {
            let info = &self.content.tensor_infos[&name];
            let elements = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            if !elements.is_multiple_of(block) {
                return Err(self.error(format!(
                    "tensor {name}: {elements} elements is not a whole number of {}-value {} blocks",
                    block,
                    type_name(info.ggml_dtype)
                )));
            }
            let bytes = (elements / block * info.ggml_dtype.type_size()) as u64;
            let start = self.content.tensor_data_offset.saturating_add(info.offset);
            let end = start.saturating_add(bytes);
            if end > file_size {
                return Err(self.error(format!(
                    "truncated: tensor {name} needs bytes {start}..{end} but the file has {file_size} bytes"
                )));
            }
        }
        Ok(())
    }
}

/// candle's error text without the backtrace candle attaches when RUST_BACKTRACE is set (a
/// user needs the message, not our call stack).
fn candle_message(error: &candle_core::Error) -> String {
    match error {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        other => other.to_string(),
    }
}

/// candle's header errors are terse; say what they mean for a user.
fn header_error_message(error: &candle_core::Error) -> String {
    let text = candle_message(error);
    if let Some(code) = text.strip_prefix("unknown dtype for tensor ") {
        format!(
            "a tensor has GGML type id {code}, which cannot be read (alpaca converts {})",
            supported_list()
        )
    } else if text.contains("failed to fill whole buffer") || text.contains("remaining") {
        format!("truncated or corrupt GGUF header: {text}")
    } else {
        format!("cannot read the GGUF header: {text}")
    }
}

/// Reads until `buffer` is full or the input ends; returns how many bytes were read.
fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..])? {
            0 => break,
            read => filled += read,
        }
    }
    Ok(filled)
}

/// llama.cpp's rope row order for a Q or K projection (`convert_hf_to_gguf.py`'s `permute`):
/// within each head, the rows of the first and second halves of the head dimension are
/// interleaved, because llama.cpp rotates adjacent pairs while HF rotates the two halves.
/// `weight` is `[heads * head_dim, columns]` (or a `[heads * head_dim]` bias); for K, `heads`
/// is the number of key/value heads.
///
/// `w.reshape(heads, 2, head_dim / 2, columns).swapaxes(1, 2).reshape(w.shape)`
pub fn permute_for_rope(weight: &Tensor, heads: usize) -> Result<Tensor> {
    regroup_rows(weight, heads, true)
}

/// The inverse of [`permute_for_rope`]: GGUF's interleaved rows back to HF's half-split order.
///
/// `w.reshape(heads, head_dim / 2, 2, columns).swapaxes(1, 2).reshape(w.shape)`
pub fn unpermute_for_rope(weight: &Tensor, heads: usize) -> Result<Tensor> {
    regroup_rows(weight, heads, false)
}

fn regroup_rows(weight: &Tensor, heads: usize, to_gguf: bool) -> Result<Tensor> {
    let dims = weight.dims().to_vec();
    let rows = dims.first().copied().unwrap_or(0);
    if heads == 0 || rows % (2 * heads) != 0 {
        return Err(candle_core::Error::Msg(format!(
            "cannot regroup {rows} rows into {heads} heads of an even size"
        ))
        .into());
    }
    let half = rows / heads / 2;
    let columns: usize = dims[1..].iter().product();
    let split = if to_gguf {
        [heads, 2, half, columns]
    } else {
        [heads, half, 2, columns]
    };
    Ok(weight
        .reshape(&split[..])?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}
