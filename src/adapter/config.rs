//! AdapterHub's `adapter_config.json` and `head_config.json`: what admix runs, and a clear refusal
//! for every setting it does not. A setting that changes the computation is never ignored.
//!
//! Run: the bottleneck placements seq_bn (Pfeiffer) and double_seq_bn (Houlsby) with any
//! non-linearity admix has, `scaling` as a number (folded into the up projection at load),
//! `leave_out` (those layers get no adapter), and classification heads of 1 to
//! [`super::MAX_HEAD_LAYERS`] linear layers with any activation. Refused: learned or per-channel
//! scaling, parallel adapters, gating, extra LayerNorms, other residual placements, invertible,
//! cross and PHM adapters, heads other than classification, the BERT pooler, heads without bias.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::AdapterKind;
use crate::backend::Activation;

/// The settings of an adapter that admix applies.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSettings {
    pub activation: Activation,
    /// the placement the config describes (the modules in the weight file must agree)
    pub kind: AdapterKind,
    /// `A(z)` is multiplied by this; folded into the up projection's weight and bias at load
    pub scaling: f32,
    /// layers without an adapter
    pub leave_out: BTreeSet<usize>,
}

impl Default for AdapterSettings {
    fn default() -> Self {
        AdapterSettings {
            activation: Activation::Relu,
            kind: AdapterKind::SeqBn,
            scaling: 1.0,
            leave_out: BTreeSet::new(),
        }
    }
}

fn flag(cfg: &Value, key: &str, default: bool) -> Result<bool> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => bail!("`{key}` is {v}, expected true or false"),
    }
}

/// Refuses a boolean setting whose value admix does not implement.
fn require(cfg: &Value, key: &str, default: bool, want: bool, what: &str) -> Result<()> {
    if flag(cfg, key, default)? != want {
        bail!("`{key}: {}` ({what}) is not supported by admix", !want);
    }
    Ok(())
}

/// The activation named by `key` (`default` when absent).
fn activation(cfg: &Value, key: &str, default: &str) -> Result<Activation> {
    let name = match cfg.get(key) {
        None | Some(Value::Null) => default,
        Some(Value::String(s)) => s.as_str(),
        Some(v) => bail!("`{key}: {v}` is not a name"),
    };
    Activation::parse(name).with_context(|| format!("unknown {key} `{name}`"))
}

/// Reads an AdapterHub bottleneck config (the `config` object of `adapter_config.json`) for a
/// model with `layers` layers.
pub fn adapter_settings(cfg: &Value, layers: usize) -> Result<AdapterSettings> {
    if !cfg.is_object() {
        bail!("the adapter config is not a JSON object");
    }
    match cfg.get("architecture") {
        None | Some(Value::Null) => {}
        Some(Value::String(a)) if a == "bottleneck" => {}
        Some(a) => bail!("adapter architecture {a} is not supported (admix runs bottleneck adapters: seq_bn, double_seq_bn)"),
    }
    let mh = flag(cfg, "mh_adapter", false)?;
    if !flag(cfg, "output_adapter", true)? {
        bail!("`output_adapter: false` is not supported (admix's adapters always follow the FFN)");
    }
    let kind = if mh { AdapterKind::DoubleSeqBn } else { AdapterKind::SeqBn };
    // Pfeiffer reads the FFN output after the layer's LayerNorm, Houlsby before it
    let ln_before = kind == AdapterKind::SeqBn;
    require(cfg, "original_ln_before", ln_before, ln_before, "where the adapter reads its input")?;
    require(cfg, "original_ln_after", true, true, "the layer's LayerNorm after the adapter")?;
    match cfg.get("residual_before_ln") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => {}
        Some(v) => bail!("`residual_before_ln: {v}` is not supported by admix (only true)"),
    }
    require(
        cfg,
        "adapter_residual_before_ln",
        false,
        false,
        "the adapter's residual before its own LayerNorm",
    )?;
    require(cfg, "ln_before", false, false, "a LayerNorm inside the adapter")?;
    require(cfg, "ln_after", false, false, "a LayerNorm inside the adapter")?;
    require(cfg, "is_parallel", false, false, "parallel adapters")?;
    require(cfg, "use_gating", false, false, "gated adapters")?;
    require(cfg, "cross_adapter", false, false, "cross-attention adapters")?;
    require(cfg, "phm_layer", false, false, "PHM (Compacter) layers")?;
    match cfg.get("inv_adapter") {
        None | Some(Value::Null) => {}
        Some(v) => bail!("`inv_adapter: {v}` (invertible adapters) is not supported by admix"),
    }
    let scaling = match cfg.get("scaling") {
        None | Some(Value::Null) => 1.0,
        Some(Value::Number(n)) => {
            let s = n.as_f64().context("`scaling` is not a number")?;
            if !(s as f32).is_finite() {
                bail!("`scaling: {n}` is not a finite 32-bit number");
            }
            s as f32
        }
        Some(v) => bail!("`scaling: {v}` is not supported by admix (only a fixed number; learned and per-channel scaling are not)"),
    };
    let mut leave_out = BTreeSet::new();
    match cfg.get("leave_out") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for v in items {
                let l = v.as_u64().with_context(|| format!("`leave_out` holds {v}, not a layer index"))?;
                if l as usize >= layers {
                    bail!(
                        "`leave_out` names layer {l}, but the model has {layers} layers (0 to {})",
                        layers - 1
                    );
                }
                leave_out.insert(l as usize);
            }
        }
        Some(v) => bail!("`leave_out: {v}` is not a list of layer indices"),
    }
    if leave_out.len() == layers {
        bail!("`leave_out` leaves out every layer: the adapter would do nothing");
    }
    let default = if kind == AdapterKind::SeqBn { "relu" } else { "swish" };
    let activation = activation(cfg, "non_linearity", default)?;
    Ok(AdapterSettings { activation, kind, scaling, leave_out })
}

/// The settings of a classification head that admix applies, and its label names.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadSettings {
    /// linear layers in all (AdapterHub's `layers`)
    pub layers: usize,
    pub activation: Activation,
    /// label names in id order, when `label2id` gives them
    pub labels: Option<Vec<String>>,
    /// `num_labels`, when given
    pub num_labels: Option<usize>,
}

/// Reads the `config` object of AdapterHub's `head_config.json`.
pub fn head_settings(cfg: &Value) -> Result<HeadSettings> {
    if !cfg.is_object() {
        bail!("the head config is not a JSON object");
    }
    match cfg.get("head_type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "classification" => {}
        Some(t) => bail!("head_type {t} is not supported (admix runs classification heads)"),
    }
    require(cfg, "use_pooler", false, false, "the BERT pooler before the head")?;
    require(cfg, "bias", true, true, "linear layers without bias")?;
    let layers = match cfg.get("layers") {
        None | Some(Value::Null) => 2,
        Some(v) => v
            .as_u64()
            .filter(|&n| n >= 1)
            .with_context(|| format!("`layers: {v}` is not a positive count"))? as usize,
    };
    let activation = activation(cfg, "activation_function", "tanh")?;
    let num_labels = match cfg.get("num_labels") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().with_context(|| format!("`num_labels: {v}` is not a count"))? as usize),
    };
    let labels = match cfg.get("label2id") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(label_names(map)?),
        Some(v) => bail!("`label2id: {v}` is not an object"),
    };
    if let (Some(l), Some(n)) = (&labels, num_labels) {
        if l.len() != n {
            bail!("`label2id` names {} labels but `num_labels` is {n}", l.len());
        }
    }
    Ok(HeadSettings { layers, activation, labels, num_labels })
}

/// Label names in id order from `label2id`: the ids must be exactly 0..n, each once.
fn label_names(map: &serde_json::Map<String, Value>) -> Result<Vec<String>> {
    let mut names: Vec<Option<String>> = vec![None; map.len()];
    for (name, id) in map {
        let i =
            id.as_u64().filter(|&i| (i as usize) < names.len()).with_context(|| {
                format!("`label2id[{name}]` is {id}, not a label id below {}", names.len())
            })? as usize;
        if let Some(other) = &names[i] {
            bail!("`label2id` gives id {i} to both `{other}` and `{name}`");
        }
        names[i] = Some(name.clone());
    }
    Ok(names.into_iter().map(|n| n.expect("n distinct ids below n cover 0..n")).collect())
}

/// How a new adapter's weights were drawn (AdapterHub's `init_weights`): `bert` (both projections
/// N(0, 0.02)) or `mam` (zero up projection: the adapter starts as the identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    Bert,
    Mam,
}

impl crate::Choice for Init {
    const WHAT: &'static str = "adapter init";
    const ALL: &'static [Self] = &[Init::Bert, Init::Mam];
    fn name(self) -> &'static str {
        match self {
            Init::Bert => "bert",
            Init::Mam => "mam",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_adapterhub_defaults_and_the_settings_admix_runs() {
        let s = adapter_settings(
            &json!({"mh_adapter": false, "output_adapter": true, "original_ln_before": true}),
            6,
        )
        .unwrap();
        assert_eq!(s, AdapterSettings::default());
        let s = adapter_settings(&json!({"mh_adapter": true, "original_ln_before": false}), 6).unwrap();
        assert_eq!((s.kind, s.activation), (AdapterKind::DoubleSeqBn, Activation::Silu));
        let s = adapter_settings(&json!({"scaling": 2.5, "leave_out": [0, 5], "non_linearity": "gelu"}), 6)
            .unwrap();
        assert_eq!((s.scaling, s.activation), (2.5, Activation::Gelu));
        assert_eq!(s.leave_out.into_iter().collect::<Vec<_>>(), [0, 5]);
    }

    #[test]
    fn refuses_what_it_does_not_run() {
        for (cfg, want) in [
            (json!({"scaling": "learned"}), "`scaling: \"learned\"` is not supported"),
            (json!({"scaling": "channel"}), "only a fixed number"),
            (json!({"is_parallel": true}), "parallel adapters"),
            (json!({"residual_before_ln": false}), "`residual_before_ln: false` is not supported"),
            (json!({"residual_before_ln": "post_add"}), "not supported"),
            (json!({"use_gating": true}), "gated"),
            (json!({"ln_before": true}), "`ln_before: true`"),
            (json!({"ln_after": true}), "`ln_after: true`"),
            (json!({"original_ln_before": false}), "`original_ln_before: false`"),
            (json!({"original_ln_after": false}), "`original_ln_after: false`"),
            (json!({"adapter_residual_before_ln": true}), "adapter_residual_before_ln"),
            (json!({"inv_adapter": "nice"}), "invertible"),
            (json!({"phm_layer": true}), "PHM"),
            (json!({"architecture": "lora"}), "architecture \"lora\""),
            (json!({"leave_out": [6]}), "names layer 6, but the model has 6 layers"),
            (json!({"leave_out": [0, 1, 2, 3, 4, 5]}), "every layer"),
            (json!({"non_linearity": "sigmoid"}), "unknown non_linearity `sigmoid`"),
            (json!({"output_adapter": false}), "output_adapter"),
        ] {
            let e = format!("{:#}", adapter_settings(&cfg, 6).unwrap_err());
            assert!(e.contains(want), "{cfg}: {e}");
        }
    }

    #[test]
    fn head_configs() {
        let h = head_settings(&json!({"head_type": "classification", "num_labels": 3, "layers": 1,
            "activation_function": "relu", "label2id": {"b": 1, "a": 0, "c": 2}}))
        .unwrap();
        assert_eq!((h.layers, h.activation, h.num_labels), (1, Activation::Relu, Some(3)));
        assert_eq!(h.labels.unwrap(), ["a", "b", "c"]);
        for (cfg, want) in [
            (json!({"head_type": "tagging"}), "head_type \"tagging\""),
            (json!({"use_pooler": true}), "pooler"),
            (json!({"bias": false}), "without bias"),
            (json!({"layers": 0}), "`layers: 0`"),
            (json!({"activation_function": "softsign"}), "unknown activation_function"),
            (json!({"label2id": {"a": 0, "b": 0}}), "gives id 0 to both `a` and `b`"),
            (json!({"label2id": {"a": 0, "b": 2}}), "`label2id[b]` is 2"),
            (json!({"label2id": {"a": 0, "b": 1}, "num_labels": 3}), "names 2 labels but `num_labels` is 3"),
        ] {
            let e = format!("{:#}", head_settings(&cfg).unwrap_err());
            assert!(e.contains(want), "{cfg}: {e}");
        }
    }
}
