//! The files open in other tools' readers: nibabel for NIfTI, ElementTree for the XML.
//!
//! Skipped (with a message) when `python3` with numpy and nibabel is not available.

mod common;

use mmcl_synth::{Cohort, WriteOptions};

const SCRIPT: &str = r#"
import json, sys, xml.etree.ElementTree as ET
import numpy as np, nibabel as nib
d, eid = sys.argv[1], sys.argv[2]
img = nib.load(f"{d}/cmr/{eid}/sa.nii.gz")
seg = nib.load(f"{d}/cmr/{eid}/seg_sa.nii.gz")
a = np.asanyarray(img.dataobj)
s = np.asanyarray(seg.dataobj)
q = img.get_qform(coded=True)
root = ET.parse(f"{d}/ecg/{eid}_20205_2_0.xml").getroot()
strip = root.find("StripData")
leads = {w.get("lead"): [int(v) for v in w.text.split(",")] for w in strip.findall("WaveformData")}
med = root.find("RestingECGMeasurements/MedianSamples")
print(json.dumps({
    "shape": list(a.shape), "dtype": str(a.dtype), "seg_dtype": str(s.dtype),
    "zooms": [float(z) for z in img.header.get_zooms()],
    "labels": sorted(int(v) for v in np.unique(s)),
    "qform_matches_sform": bool(np.allclose(q[0], img.get_sform(), atol=1e-3)),
    "qform_code": int(q[1]),
    "affine": img.affine.tolist(),
    "image_sum": int(a.astype(np.int64).sum()),
    "lv_voxels_ed": int((s[..., 0] == 1).sum()),
    "root": root.tag,
    "sample_rate": int(strip.find("SampleRate").text),
    "resolution_units": strip.find("Resolution").get("units"),
    "leads": sorted(leads),
    "lead_lengths": sorted({len(v) for v in leads.values()}),
    "lead_ii_sum": sum(leads["II"]),
    "median_lengths": sorted({len(w.text.split(",")) for w in med.findall("WaveformData")}),
}))
"#;

#[test]
fn nibabel_and_elementtree_read_the_files() {
    if !common::python_with("numpy, nibabel") {
        return;
    }
    let cfg = common::small_cohort(2, 5, 40, 5, 4);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cohort");
    let cohort = Cohort::new(cfg.clone()).unwrap();
    cohort.write(&dir, WriteOptions::default(), &|| {}).unwrap();
    let subject = cohort.subject(1).unwrap();
    let eid = cfg.eid(1);
    let v = common::python_json(SCRIPT, &[dir.as_os_str(), eid.to_string().as_ref()]);
    assert_eq!(v["shape"], serde_json::json!([40, 40, 5, 4]));
    assert_eq!(v["dtype"], "int16");
    assert_eq!(v["seg_dtype"], "uint8");
    let zooms: Vec<f64> = serde_json::from_value(v["zooms"].clone()).unwrap();
    assert!((zooms[0] - 230.0 / 40.0).abs() < 1e-5);
    assert!((zooms[2] - 20.0).abs() < 1e-5);
    assert!((zooms[3] - subject.cine.frame_ms).abs() < 1e-3);
    assert_eq!(v["labels"], serde_json::json!([0, 1, 2, 3]));
    assert_eq!(v["qform_matches_sform"], true);
    assert_eq!(v["qform_code"], 1);
    let affine: Vec<Vec<f64>> = serde_json::from_value(v["affine"].clone()).unwrap();
    for (row, expected) in affine.iter().zip(&subject.cine.affine) {
        for (a, b) in row.iter().zip(expected) {
            assert!((a - b).abs() < 1e-3, "affine {a} vs {b}");
        }
    }
    let image_sum: i64 = subject.cine.image.iter().map(|&x| x as i64).sum();
    assert_eq!(v["image_sum"], image_sum);
    let frame = 40 * 40 * 5;
    let lv = subject.cine.labels[..frame]
        .iter()
        .filter(|&&l| l == 1)
        .count();
    assert_eq!(v["lv_voxels_ed"], lv);
    assert_eq!(v["root"], "CardiologyXML");
    assert_eq!(v["sample_rate"], 500);
    assert_eq!(v["resolution_units"], "uVperLsb");
    let mut leads: Vec<&str> = mmcl_synth::ecg::LEAD_NAMES.to_vec();
    leads.sort();
    assert_eq!(v["leads"], serde_json::json!(leads));
    assert_eq!(v["lead_lengths"], serde_json::json!([5000]));
    assert_eq!(v["median_lengths"], serde_json::json!([600]));
    let ii: i64 = subject.ecg.strip[1].iter().map(|&x| x as i64).sum();
    assert_eq!(v["lead_ii_sum"], ii);
}
