//! Checkpoints in AdapterHub's format, so that Python's `adapters` loads what admix trains and
//! admix loads what `adapters` saved:
//!
//! - `adapter_config.json` + `adapter.safetensors` (tensor names `bert.encoder.layer.{i}.…adapters.{name}.…`,
//!   `roberta.` for RoBERTa),
//! - `head_config.json` + `model_head.safetensors` (`heads.{name}.…`, with `label2id`),
//! - full fine-tuning: `config.json` + `model.safetensors` (Hugging Face names, `bert.` or `roberta.`
//!   prefix) + `tokenizer.json`, a model directory any BERT (RoBERTa) loader reads.
//!
//! A checkpoint directory is replaced as a whole ([`crate::io::replace_dir`]): a crash while
//! writing leaves the previous checkpoint intact.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::adapter::Init;
use crate::adapter::{self, Adapter, AdapterKind, ClassificationHead};
use crate::backend::{Activation, Backend};
use crate::io::{write_atomic, write_safetensors};
use crate::model::bert::QKV;
use crate::model::classify::Model;
use crate::model::config::Family;
use crate::weights::{Tensor, WeightFile};

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter.safetensors";
pub const HEAD_CONFIG: &str = "head_config.json";
pub const HEAD_WEIGHTS: &str = "model_head.safetensors";
const ADAPTERS_VERSION: &str = "adapters.1.3.0";

/// What a checkpoint records besides the tensors.
#[derive(Clone, Debug)]
pub struct Meta {
    /// the base model's directory (config and tokenizer are copied from it for full fine-tuning)
    pub base_model: PathBuf,
    /// the encoder's family (the checkpoint's `model_type` and `model_class`)
    pub family: Family,
    pub hidden: usize,
    pub labels: Vec<String>,
    /// the adapter's reduction factor and init, for `adapter_config.json`
    pub reduction: Option<usize>,
    pub init: Init,
}

fn activation_name(a: Activation) -> &'static str {
    match a {
        Activation::Relu => "relu",
        Activation::Silu => "swish",
        Activation::Gelu => "gelu",
        Activation::Tanh => "tanh",
        Activation::Identity => "linear",
    }
}

/// AdapterHub's resolved bottleneck config for our two placements.
fn adapter_config(kind: AdapterKind, reduction: usize, act: Activation, init: Init) -> serde_json::Value {
    let pfeiffer = kind == AdapterKind::SeqBn;
    json!({
        "architecture": null,
        "mh_adapter": !pfeiffer,
        "output_adapter": true,
        "reduction_factor": reduction,
        "non_linearity": activation_name(act),
        "original_ln_before": pfeiffer,
        "original_ln_after": true,
        "ln_before": false,
        "ln_after": false,
        "init_weights": if init == Init::Mam { "mam_adapter" } else { "bert" },
        "is_parallel": false,
        "scaling": 1.0,
        "use_gating": false,
        "residual_before_ln": true,
        "adapter_residual_before_ln": false,
        "inv_adapter": null,
        "inv_adapter_reduction_factor": null,
        "cross_adapter": false,
        "leave_out": [],
        "dropout": 0.0,
        "phm_layer": false,
        "stochastic_depth": 0.0,
    })
}

fn wrapper(config: serde_json::Value, meta: &Meta, name: &str) -> serde_json::Value {
    json!({
        "config": config,
        "hidden_size": meta.hidden,
        "model_class": meta.family.adapter_model_class(),
        "model_name": meta.base_model.file_name().map(|n| n.to_string_lossy().to_string()),
        "model_type": meta.family.model_type(),
        "name": name,
        "version": ADAPTERS_VERSION,
    })
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())
}

/// Writes the model's trainable tensors (and configs) into `dir` (which must exist).
pub fn write<B: Backend>(be: &B, model: &mut Model<B>, meta: &Meta, dir: &Path) -> Result<()> {
    let adapter_info = model.adapter.as_ref().map(|a| (a.name.clone(), a.kind, a.activation));
    let head_name = model.head.name.clone();
    let (mut adapter_t, mut head_t, mut base_t) = (vec![], vec![], vec![]);
    for p in model.params() {
        let t = be.weight_to_host(p.weight)?;
        let entry = (p.name.clone(), t.shape().to_vec(), t.data().to_vec());
        if p.name.starts_with("heads.") {
            head_t.push(entry);
        } else if p.name.contains(".adapters.") {
            adapter_t.push(entry);
        } else {
            base_t.extend(split_qkv(entry));
        }
    }
    if let Some((name, kind, act)) = adapter_info {
        let reduction = meta.reduction.context("the adapter's reduction factor is unknown")?;
        write_safetensors(&dir.join(ADAPTER_WEIGHTS), &adapter_t)?;
        write_json(
            &dir.join(ADAPTER_CONFIG),
            &wrapper(adapter_config(kind, reduction, act, meta.init), meta, &name),
        )?;
    }
    write_safetensors(&dir.join(HEAD_WEIGHTS), &head_t)?;
    let label2id: serde_json::Map<String, serde_json::Value> =
        meta.labels.iter().enumerate().map(|(i, l)| (l.clone(), json!(i))).collect();
    let head_config = json!({
        "head_type": "classification",
        "num_labels": meta.labels.len(),
        "layers": model.head.layers(),
        "activation_function": activation_name(model.head.activation),
        "label2id": label2id,
        "use_pooler": false,
        "bias": true,
        "dropout_prob": null,
    });
    write_json(&dir.join(HEAD_CONFIG), &wrapper(head_config, meta, &head_name))?;
    if !base_t.is_empty() {
        write_safetensors(&dir.join("model.safetensors"), &base_t)?;
        for f in ["config.json", "tokenizer.json"] {
            let bytes = std::fs::read(meta.base_model.join(f))
                .with_context(|| format!("cannot read {}", meta.base_model.join(f).display()))?;
            write_atomic(&dir.join(f), &bytes)?;
        }
    }
    Ok(())
}

/// The fused `[3H, H]` Q/K/V tensor back as Hugging Face's `query`, `key`, `value`.
fn split_qkv((name, shape, data): (String, Vec<usize>, Vec<f32>)) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let Some(prefix) = name.strip_suffix(".weight").or(name.strip_suffix(".bias")) else {
        return vec![(name, shape, data)];
    };
    let Some(layer) = prefix.strip_suffix(QKV) else {
        return vec![(name, shape, data)];
    };
    let suffix = &name[prefix.len()..];
    let part = data.len() / 3;
    let mut part_shape = shape.clone();
    part_shape[0] /= 3;
    ["query", "key", "value"]
        .iter()
        .enumerate()
        .map(|(i, m)| {
            (
                format!("{layer}attention.self.{m}{suffix}"),
                part_shape.clone(),
                data[i * part..(i + 1) * part].to_vec(),
            )
        })
        .collect()
}

/// A checkpoint read back.
pub struct Loaded {
    pub adapter: Option<Adapter<Tensor>>,
    pub head: ClassificationHead<Tensor>,
    pub labels: Vec<String>,
    /// set when the checkpoint holds a full model (`config.json` + `model.safetensors`)
    pub model_dir: Option<PathBuf>,
    /// the `model_type` the adapter or head was saved for (`bert`, `roberta`), when recorded
    pub model_type: Option<String>,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// Reads a checkpoint directory written by admix or by AdapterHub's `save_adapter(…, with_head=True)`.
pub fn load(dir: &Path, layers: usize, hidden: usize) -> Result<Loaded> {
    crate::io::recover_dir(dir)?;
    if !dir.is_dir() {
        bail!("checkpoint {} does not exist", dir.display());
    }
    let head_cfg = read_json(&dir.join(HEAD_CONFIG))?;
    let head_file = WeightFile::open(&dir.join(HEAD_WEIGHTS))?;
    let head_name = adapter::resolve_name(
        &head_file,
        head_cfg["name"].as_str(),
        "head",
        adapter::head_names(&head_file),
    )?;
    let head_cfg_path = dir.join(HEAD_CONFIG);
    let hs = adapter::config::head_settings(&head_cfg["config"])
        .with_context(|| format!("{}", head_cfg_path.display()))?;
    let head = ClassificationHead::load_with(&head_file, &head_name, hidden, hs.layers, hs.activation)?;
    if let Some(n) = hs.num_labels.filter(|&n| n != head.num_labels) {
        bail!("{}: num_labels is {n} but the head has {} outputs", head_cfg_path.display(), head.num_labels);
    }
    let labels = match hs.labels {
        Some(l) if l.len() == head.num_labels => l,
        Some(l) => bail!(
            "{}: label2id names {} labels but the head has {} outputs",
            head_cfg_path.display(),
            l.len(),
            head.num_labels
        ),
        None => (0..head.num_labels).map(|i| i.to_string()).collect(),
    };
    let mut model_type = head_cfg["model_type"].as_str().map(str::to_string);
    let adapter = if dir.join(ADAPTER_CONFIG).exists() {
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let cfg = read_json(&cfg_path)?;
        model_type = cfg["model_type"].as_str().map(str::to_string).or(model_type);
        let settings = adapter::config::adapter_settings(&cfg["config"], layers)
            .with_context(|| format!("{}", cfg_path.display()))?;
        let file = WeightFile::open(&dir.join(ADAPTER_WEIGHTS))?;
        let name =
            adapter::resolve_name(&file, cfg["name"].as_str(), "adapter", adapter::adapter_names(&file))?;
        Some(Adapter::load_configured(&file, &name, layers, hidden, &settings)?)
    } else if dir.join(ADAPTER_WEIGHTS).exists() {
        bail!(
            "{}: {ADAPTER_WEIGHTS} is there but {ADAPTER_CONFIG} is not (without it the adapter's settings are unknown)",
            dir.display()
        );
    } else {
        None
    };
    let model_dir = dir.join("model.safetensors").exists().then(|| dir.to_path_buf());
    Ok(Loaded { adapter, head, labels, model_dir, model_type })
}
