//! The intensity block of the statistics against numpy (`fixtures/infer/stats/intensity.json`,
//! written by `tools/gen_stats_fixtures.py`): mean, population standard deviation, min, max and
//! the linear percentiles of the finite values.

use serde_json::Value;
use voxtell_infer::stats::Intensity;

#[test]
fn intensity_figures_match_numpy() {
    let fixture: Value =
        voxtell_testutil::read_json(voxtell_testutil::fixtures().join("infer/stats/intensity.json"));
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 6);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let mut values: Vec<f32> = case["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|v| match v {
                Value::String(s) => s.parse::<f32>().expect("non-finite value"),
                other => other.as_f64().expect("number") as f32,
            })
            .collect();
        let got = Intensity::of_values(&mut values);
        let want = &case["expected"];
        let Some(got) = got else {
            assert!(want.is_null(), "{name}: none computed, numpy gives {want}");
            continue;
        };
        assert!(!want.is_null(), "{name}: numpy has no figures, ours {got:?}");
        let scale = 1.0 + want["max"].as_f64().expect("max").abs() + want["min"].as_f64().expect("min").abs();
        for (key, ours) in [
            ("mean", got.mean),
            ("std", got.std),
            ("min", got.min),
            ("max", got.max),
            ("p5", got.p5),
            ("p50", got.p50),
            ("p95", got.p95),
        ] {
            let theirs = want[key].as_f64().expect(key);
            assert!((ours - theirs).abs() <= 1e-12 * scale, "{name}: {key} {ours} vs numpy {theirs}");
        }
    }
}
