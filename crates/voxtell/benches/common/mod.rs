//! What the full-size bench programs (`encoder`, `model`) share: VoxTell's released encoder
//! plan, the peak resident size, and their command line.

/// VoxTell's released encoder plan (`arch_kwargs` of `plans.json`).
pub const PLAN: &str = r#"{"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3,3,3],[3,3,3],[3,3,3],[3,3,3],[3,3,3],[3,3,3]],
    "strides": [[1,1,1],[2,2,2],[2,2,2],[2,2,2],[2,2,2],[2,2,2]], "n_blocks_per_stage": [1,3,4,6,6,6],
    "n_conv_per_stage_decoder": [1,1,1,1,1], "conv_bias": true,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": true},
    "dropout_op": null, "dropout_op_kwargs": null, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": true}}"#;

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

/// The program's arguments without the `--bench` flag that `cargo bench` adds, or `None` when
/// there are none: then `usage` is printed and the program ends, so that a plain
/// `cargo bench` (every bench of the workspace) does not start a full-size run of minutes and
/// gigabytes. Give at least one argument (`cargo bench -p voxtell --bench NAME -- ARGS`).
pub fn args_or_usage(usage: &str) -> Option<Vec<String>> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.is_empty() {
        println!("{usage}");
        return None;
    }
    Some(args)
}
