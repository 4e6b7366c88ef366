//! What VoxTell reads of a plans file: the `3d_fullres` configuration's architecture and patch
//! size ([`PlansNetwork`]). A leaf: the model builds its sizes from it, the folder reader and the
//! trainer read plans files through it.

use voxtell_vision::ArchKwargs;

use crate::error::{FusionError, Result};

/// The nnU-Net configuration VoxTell builds.
const CONFIGURATION: &str = "3d_fullres";

/// The network a plans file describes: the encoder/decoder plan and the patch size of its
/// `3d_fullres` configuration, the one VoxTell builds.
#[derive(Debug, Clone, PartialEq)]
pub struct PlansNetwork {
    /// `configurations.3d_fullres.architecture.arch_kwargs`.
    pub arch: ArchKwargs,
    /// `configurations.3d_fullres.patch_size`.
    pub patch_size: [usize; 3],
}

impl PlansNetwork {
    /// Read the `3d_fullres` configuration of a parsed plans file. Errors say which entry is
    /// missing or unusable.
    pub fn from_plans(plans: &serde_json::Value) -> Result<Self> {
        let conf = plans.get("configurations").and_then(|c| c.get(CONFIGURATION)).ok_or_else(|| {
            FusionError::Config(format!("plans.json has no configurations.{CONFIGURATION}"))
        })?;
        let arch = ArchKwargs::from_plans(plans, CONFIGURATION)?;
        if arch.n_stages < 2 {
            return Err(FusionError::Config(format!(
                "plans.json: configurations.{CONFIGURATION} has {} stage(s); VoxTell needs at least two",
                arch.n_stages
            )));
        }
        let patch: Vec<usize> = conf
            .get("patch_size")
            .and_then(|p| serde_json::from_value(p.clone()).ok())
            .filter(|p: &Vec<usize>| p.len() == 3 && !p.contains(&0))
            .ok_or_else(|| {
                FusionError::Config("plans.json: patch_size must be three positive sizes".into())
            })?;
        Ok(PlansNetwork { arch, patch_size: [patch[0], patch[1], patch[2]] })
    }
}
