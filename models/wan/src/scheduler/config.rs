//! `scheduler/scheduler_config.json` read by its `_class_name` into one of the two sampler configs the Wan port supports, with every option outside that port refused by name instead of silently ignored.
//!
//! Field names and defaults are diffusers' (`UniPCMultistepScheduler.__init__`,
//! `FlowMatchEulerDiscreteScheduler.__init__`), so a diffusers config file reads unchanged; fields
//! that only matter to schedules the port does not implement (`beta_*`, `timestep_spacing`,
//! `steps_offset`, ...) are accepted and ignored, because `use_flow_sigmas` makes them inert.

use std::path::Path;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::error::{Result, WanError};
use crate::weights::read_json;

/// The diffusers class name of the UniPC sampler.
pub const UNIPC_CLASS: &str = "UniPCMultistepScheduler";
/// The diffusers class name of the flow-matching Euler sampler.
pub const FLOW_MATCH_EULER_CLASS: &str = "FlowMatchEulerDiscreteScheduler";

/// One scheduler config, as `_class_name` names it.
#[derive(Clone, Debug, PartialEq)]
pub enum SchedulerConfig {
    UniPc(UniPcConfig),
    FlowMatchEuler(FlowMatchEulerConfig),
}

/// UniPC's B(h) variant: `bh1` (B(h) = h) or `bh2` (B(h) = e^h − 1). diffusers rewrites the
/// legacy names `midpoint`, `heun` and `logrho` to `bh2`, and so does this reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum SolverType {
    #[serde(rename = "bh1")]
    Bh1,
    #[serde(rename = "bh2", alias = "midpoint", alias = "heun", alias = "logrho")]
    Bh2,
}

/// The sigma appended after the last step: 0 (the sample becomes the x0 prediction) or the
/// last step's own sigma.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmas {
    Zero,
    SigmaMin,
}

/// `UniPCMultistepScheduler`'s options that the flow-sigma schedule and the step read, plus the
/// ones that must keep their defaults for this port to be the reference.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct UniPcConfig {
    pub num_train_timesteps: usize,
    pub solver_order: usize,
    /// Only `flow_prediction` (the model predicts the velocity noise − x0) is implemented.
    pub prediction_type: String,
    /// Only `true` (the UniPC "data prediction" form) is implemented.
    pub predict_x0: bool,
    pub solver_type: SolverType,
    /// Lower the order of the last steps (`min(solver_order, steps left)`).
    pub lower_order_final: bool,
    /// Steps whose following corrector is skipped, as diffusers indexes them.
    pub disable_corrector: Vec<usize>,
    /// Only `true` is implemented.
    pub use_flow_sigmas: bool,
    /// `shift(s) = flow_shift·s / (1 + (flow_shift − 1)·s)`; 3.0 in the published Wan config.
    pub flow_shift: f64,
    pub final_sigmas_type: FinalSigmas,
    pub thresholding: bool,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub use_dynamic_shifting: bool,
    pub shift_terminal: Option<f64>,
    /// A second scheduler as the predictor; only `null` is implemented.
    pub solver_p: Option<Value>,
}

impl Default for UniPcConfig {
    /// diffusers' own defaults (which are NOT Wan's: flow sigmas are off).
    fn default() -> Self {
        UniPcConfig {
            num_train_timesteps: 1000,
            solver_order: 2,
            prediction_type: "epsilon".into(),
            predict_x0: true,
            solver_type: SolverType::Bh2,
            lower_order_final: true,
            disable_corrector: Vec::new(),
            use_flow_sigmas: false,
            flow_shift: 1.0,
            final_sigmas_type: FinalSigmas::Zero,
            thresholding: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_dynamic_shifting: false,
            shift_terminal: None,
            solver_p: None,
        }
    }
}

impl UniPcConfig {
    /// The published `Wan-AI/Wan2.1-T2V-1.3B-Diffusers` scheduler with the given flow shift
    /// (3.0 as published; the model card suggests 5.0 at 720p).
    pub fn wan(flow_shift: f64) -> Self {
        UniPcConfig {
            prediction_type: "flow_prediction".into(),
            use_flow_sigmas: true,
            flow_shift,
            ..UniPcConfig::default()
        }
    }

    /// Every option this port does not implement, refused with its name and value.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let mut refused = Vec::new();
        if !self.use_flow_sigmas {
            refused.push(
                "use_flow_sigmas false (only the flow-matching sigmas are implemented)".to_string(),
            );
        }
        if self.prediction_type != "flow_prediction" {
            refused.push(format!(
                "prediction_type \"{}\" (only \"flow_prediction\", a velocity model like Wan's)",
                self.prediction_type
            ));
        }
        if !self.predict_x0 {
            refused.push("predict_x0 false (only the data-prediction form)".to_string());
        }
        if self.solver_order == 0 {
            refused.push("solver_order 0 (at least 1)".to_string());
        }
        if self.thresholding {
            refused.push("thresholding true".to_string());
        }
        for (set, name) in [
            (self.use_karras_sigmas, "use_karras_sigmas"),
            (self.use_exponential_sigmas, "use_exponential_sigmas"),
            (self.use_beta_sigmas, "use_beta_sigmas"),
            (self.use_dynamic_shifting, "use_dynamic_shifting"),
        ] {
            if set {
                refused.push(format!("{name} true"));
            }
        }
        if let Some(terminal) = self.shift_terminal {
            refused.push(format!("shift_terminal {terminal}"));
        }
        if self.solver_p.as_ref().is_some_and(|value| !value.is_null()) {
            refused.push("solver_p (a second predictor scheduler)".to_string());
        }
        check_shift("flow_shift", self.flow_shift, &mut refused);
        check_train_steps(self.num_train_timesteps, &mut refused);
        verdict(UNIPC_CLASS, refused)
    }
}

/// `FlowMatchEulerDiscreteScheduler`'s options, with the same rule as [`UniPcConfig`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct FlowMatchEulerConfig {
    pub num_train_timesteps: usize,
    /// The same shift function as UniPC's `flow_shift`.
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub shift_terminal: Option<f64>,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub invert_sigmas: bool,
    pub stochastic_sampling: bool,
}

impl Default for FlowMatchEulerConfig {
    /// diffusers' defaults (shift 1.0: no shift).
    fn default() -> Self {
        FlowMatchEulerConfig {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            invert_sigmas: false,
            stochastic_sampling: false,
        }
    }
}

impl FlowMatchEulerConfig {
    pub fn with_shift(shift: f64) -> Self {
        FlowMatchEulerConfig {
            shift,
            ..FlowMatchEulerConfig::default()
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        let mut refused = Vec::new();
        for (set, name) in [
            (self.use_dynamic_shifting, "use_dynamic_shifting"),
            (self.use_karras_sigmas, "use_karras_sigmas"),
            (self.use_exponential_sigmas, "use_exponential_sigmas"),
            (self.use_beta_sigmas, "use_beta_sigmas"),
            (self.invert_sigmas, "invert_sigmas"),
            (self.stochastic_sampling, "stochastic_sampling"),
        ] {
            if set {
                refused.push(format!("{name} true"));
            }
        }
        if let Some(terminal) = self.shift_terminal {
            refused.push(format!("shift_terminal {terminal}"));
        }
        check_shift("shift", self.shift, &mut refused);
        check_train_steps(self.num_train_timesteps, &mut refused);
        verdict(FLOW_MATCH_EULER_CLASS, refused)
    }
}

fn check_shift(name: &str, shift: f64, refused: &mut Vec<String>) {
    if !(shift.is_finite() && shift > 0.0) {
        refused.push(format!("{name} {shift} (a finite number above 0)"));
    }
}

fn check_train_steps(steps: usize, refused: &mut Vec<String>) {
    if !(2..=1_000_000).contains(&steps) {
        refused.push(format!("num_train_timesteps {steps} (2 to 1000000)"));
    }
}

fn verdict(class: &str, refused: Vec<String>) -> std::result::Result<(), String> {
    if refused.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{class}: not supported by the Wan port: {}",
            refused.join("; ")
        ))
    }
}

impl SchedulerConfig {
    /// The published Wan 2.1 scheduler: UniPC, flow sigmas, flow_shift 3.0, order 2, bh2.
    pub fn wan_default() -> Self {
        SchedulerConfig::UniPc(UniPcConfig::wan(3.0))
    }

    /// The published UniPC settings with another flow shift.
    pub fn unipc(flow_shift: f64) -> Self {
        SchedulerConfig::UniPc(UniPcConfig::wan(flow_shift))
    }

    /// Flow-matching Euler with the given shift.
    pub fn flow_match_euler(shift: f64) -> Self {
        SchedulerConfig::FlowMatchEuler(FlowMatchEulerConfig::with_shift(shift))
    }

    /// `scheduler/scheduler_config.json` (see `Checkpoint::scheduler_config_file`).
    pub fn load(path: &Path) -> Result<Self> {
        let value: Value = read_json(path)?;
        Self::parse(value).map_err(|reason| WanError::InvalidFile {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// A config already read as JSON (it must carry `_class_name`).
    pub fn from_value(value: Value) -> Result<Self> {
        Self::parse(value)
            .map_err(|reason| WanError::InvalidRequest(format!("scheduler config: {reason}")))
    }

    fn parse(value: Value) -> std::result::Result<Self, String> {
        let class = match value.get("_class_name") {
            Some(Value::String(class)) => class.clone(),
            Some(other) => return Err(format!("_class_name {other} is not a string")),
            None => {
                return Err(format!(
                    "no _class_name; expected \"{UNIPC_CLASS}\" or \"{FLOW_MATCH_EULER_CLASS}\""
                ));
            }
        };
        let config = match class.as_str() {
            UNIPC_CLASS => SchedulerConfig::UniPc(
                serde_json::from_value(value).map_err(|error| format!("{UNIPC_CLASS}: {error}"))?,
            ),
            FLOW_MATCH_EULER_CLASS => SchedulerConfig::FlowMatchEuler(
                serde_json::from_value(value)
                    .map_err(|error| format!("{FLOW_MATCH_EULER_CLASS}: {error}"))?,
            ),
            other => {
                return Err(format!(
                    "scheduler class \"{other}\" is not supported; the Wan port implements \
                     \"{UNIPC_CLASS}\" and \"{FLOW_MATCH_EULER_CLASS}\""
                ));
            }
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            SchedulerConfig::UniPc(config) => config.validate(),
            SchedulerConfig::FlowMatchEuler(config) => config.validate(),
        }
    }

    /// The diffusers class name.
    pub fn class_name(&self) -> &'static str {
        match self {
            SchedulerConfig::UniPc(_) => UNIPC_CLASS,
            SchedulerConfig::FlowMatchEuler(_) => FLOW_MATCH_EULER_CLASS,
        }
    }

    /// The flow shift (`flow_shift` for UniPC, `shift` for Euler).
    pub fn shift(&self) -> f64 {
        match self {
            SchedulerConfig::UniPc(config) => config.flow_shift,
            SchedulerConfig::FlowMatchEuler(config) => config.shift,
        }
    }

    /// The same sampler with another shift (a render's resolution-dependent override).
    pub fn with_shift(mut self, shift: f64) -> Self {
        match &mut self {
            SchedulerConfig::UniPc(config) => config.flow_shift = shift,
            SchedulerConfig::FlowMatchEuler(config) => config.shift = shift,
        }
        self
    }
}

impl<'de> Deserialize<'de> for SchedulerConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::parse(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The published Wan 2.1 `scheduler_config.json` as the spec reconstructs it.
    fn published() -> Value {
        json!({
            "_class_name": "UniPCMultistepScheduler", "_diffusers_version": "0.33.0.dev0",
            "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
            "disable_corrector": [], "dynamic_thresholding_ratio": 0.995,
            "final_sigmas_type": "zero", "flow_shift": 3.0, "lower_order_final": true,
            "num_train_timesteps": 1000, "predict_x0": true, "prediction_type": "flow_prediction",
            "rescale_betas_zero_snr": false, "sample_max_value": 1.0, "solver_order": 2,
            "solver_p": null, "solver_type": "bh2", "steps_offset": 0, "thresholding": false,
            "timestep_spacing": "linspace", "trained_betas": null, "use_beta_sigmas": false,
            "use_exponential_sigmas": false, "use_flow_sigmas": true, "use_karras_sigmas": false
        })
    }

    #[test]
    fn the_published_config_is_the_wan_default() {
        let config = SchedulerConfig::from_value(published()).unwrap();
        assert_eq!(config, SchedulerConfig::wan_default());
        assert_eq!(config.class_name(), UNIPC_CLASS);
        assert_eq!(config.shift(), 3.0);
        assert_eq!(config.clone().with_shift(5.0), SchedulerConfig::unipc(5.0));
        let parsed: SchedulerConfig = serde_json::from_value(published()).unwrap();
        assert_eq!(parsed, config);
    }

    #[test]
    fn the_euler_config_reads_with_defaults() {
        let config = SchedulerConfig::from_value(json!({
            "_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 5, "base_shift": 0.5,
            "max_shift": 1.15, "shift_terminal": null
        }))
        .unwrap();
        assert_eq!(config, SchedulerConfig::flow_match_euler(5.0));
    }

    #[test]
    fn an_unknown_class_names_itself_and_the_supported_two() {
        let error = SchedulerConfig::from_value(json!({"_class_name": "DDIMScheduler"}))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("\"DDIMScheduler\" is not supported"),
            "{error}"
        );
        assert!(
            error.contains(UNIPC_CLASS) && error.contains(FLOW_MATCH_EULER_CLASS),
            "{error}"
        );
        let error = SchedulerConfig::from_value(json!({"flow_shift": 3.0}))
            .unwrap_err()
            .to_string();
        assert!(error.contains("no _class_name"), "{error}");
    }

    #[test]
    fn unimplemented_options_are_refused_by_name() {
        let mut value = published();
        value["use_flow_sigmas"] = json!(false);
        value["use_karras_sigmas"] = json!(true);
        value["prediction_type"] = json!("epsilon");
        let error = SchedulerConfig::from_value(value).unwrap_err().to_string();
        for name in [
            "use_flow_sigmas false",
            "use_karras_sigmas true",
            "prediction_type \"epsilon\"",
        ] {
            assert!(error.contains(name), "{name} not in {error}");
        }
        let mut value = published();
        value["solver_type"] = json!("bh3");
        let error = SchedulerConfig::from_value(value).unwrap_err().to_string();
        assert!(error.contains("bh3"), "{error}");
        let mut value = published();
        value["solver_type"] = json!("midpoint");
        let SchedulerConfig::UniPc(config) = SchedulerConfig::from_value(value).unwrap() else {
            panic!()
        };
        assert_eq!(config.solver_type, SolverType::Bh2);
        let error = SchedulerConfig::flow_match_euler(0.0)
            .validate()
            .unwrap_err();
        assert!(error.contains("shift 0"), "{error}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler_config.json");
        std::fs::write(&path, r#"{"_class_name": "EulerDiscreteScheduler"}"#).unwrap();
        let error = SchedulerConfig::load(&path).unwrap_err().to_string();
        assert!(error.starts_with(&path.display().to_string()), "{error}");
        assert!(error.contains("EulerDiscreteScheduler"), "{error}");
        std::fs::write(&path, published().to_string()).unwrap();
        assert_eq!(
            SchedulerConfig::load(&path).unwrap(),
            SchedulerConfig::wan_default()
        );
    }
}
