//! Weight-only quantization (`tolk_models::llama::quant`) against an independent numpy
//! implementation of the documented layout (`tests/reference/quant_check.py`): our codes, packed
//! bytes and scales must equal numpy's exactly, and our dequantization of numpy's files must
//! equal numpy's dequantization. A packing-order or rounding mistake on either side fails here.

use std::collections::HashMap;

use tch::{Kind, Tensor};
use tolk_models::llama::quant::{dequantize_tensor, quantize_tensor};
use tolk_models::llama::QuantScheme;
use tolk_tests::{max_abs_diff, read_tensors, reference_dir};

fn mismatches(a: &Tensor, b: &Tensor) -> i64 {
    assert_eq!(a.size(), b.size());
    assert_eq!(a.kind(), b.kind(), "stored dtypes differ");
    a.ne_tensor(b).sum(Kind::Int64).int64_value(&[])
}

#[test]
fn quantized_layouts_match_numpy() {
    let dir = reference_dir("quant");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("reference.json")).expect("reference.json"),
    )
    .unwrap();
    let group = meta["group_size"].as_i64().unwrap();
    let weights = read_tensors(&dir.join("weights.safetensors"));
    let cases: [(QuantScheme, &str); 2] = [
        (QuantScheme::Int8, "int8"),
        (
            QuantScheme::Int4 { group_size: group },
            &format!("int4_g{group}"),
        ),
    ];
    for (scheme, file) in cases {
        let theirs: HashMap<String, Tensor> =
            read_tensors(&dir.join(format!("{file}.safetensors")));
        let deq: HashMap<String, Tensor> =
            read_tensors(&dir.join(format!("{file}_dequant.safetensors")));
        for name in meta["names"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            let w = &weights[name];
            let (q, s) = quantize_tensor(w, scheme).unwrap();
            let (tq, ts) = (
                &theirs[&format!("{name}.qweight")],
                &theirs[&format!("{name}.scales")],
            );
            let code_diff = mismatches(&q, tq);
            let scale_diff = max_abs_diff(&s, ts);
            // Our dequantization of numpy's file, and of our own, against numpy's.
            let ours_of_theirs = dequantize_tensor(tq, ts, scheme, Kind::Float).unwrap();
            let d1 = max_abs_diff(&ours_of_theirs, &deq[name]);
            let d2 = max_abs_diff(
                &dequantize_tensor(&q, &s, scheme, Kind::Float).unwrap(),
                &deq[name],
            );
            let err = max_abs_diff(&ours_of_theirs, w);
            println!(
                "{} {name}: {code_diff} differing stored bytes, scale diff {scale_diff:.1e}, \
                 dequant diff {d1:.1e} / {d2:.1e}, round-trip error {err:.3e}",
                scheme.label()
            );
            assert_eq!(
                code_diff,
                0,
                "{} {name}: stored codes differ",
                scheme.label()
            );
            assert_eq!(scale_diff, 0.0, "{} {name}: scales differ", scheme.label());
            assert!(
                d1 <= 1e-7 && d2 <= 1e-7,
                "{} {name}: {d1} {d2}",
                scheme.label()
            );
        }
    }
}
