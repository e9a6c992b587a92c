//! The DICOM zips open in pydicom, and a UK Biobank–style conversion of them (each frame's
//! `pixel_array` transposed into `[x, y]`, slices in `SAX_b` order, frames by `TriggerTime`,
//! the affine from orientation, position and spacing in RAS) gives the NIfTI twin's voxels and
//! affine.
//!
//! Skipped (with a message) when `python3` with numpy and pydicom is not available.

mod common;

use mmcl_synth::{CmrFormat, Cohort, WriteOptions};

const SCRIPT: &str = r#"
import io, json, re, sys, zipfile
import numpy as np, pydicom
path = sys.argv[1]
frames = []
with zipfile.ZipFile(path) as z:
    for name in z.namelist():
        if not name.endswith(".dcm"):
            continue
        frames.append(pydicom.dcmread(io.BytesIO(z.read(name))))
series = sorted({int(re.search(r"_b(\d+)$", f.SeriesDescription).group(1)) for f in frames})
by = {s: sorted((f for f in frames if f.SeriesDescription.endswith(f"_b{s}")),
                key=lambda f: float(f.TriggerTime)) for s in series}
first = by[series[0]][0]
nx, ny, nz, nt = int(first.Columns), int(first.Rows), len(series), len(by[series[0]])
vol = np.zeros((nx, ny, nz, nt))
for z, s in enumerate(series):
    for t, f in enumerate(by[s]):
        vol[:, :, z, t] = f.pixel_array.T * float(f.RescaleSlope) + float(f.RescaleIntercept)
o = np.array([float(v) for v in first.ImageOrientationPatient])
dy, dx = (float(v) for v in first.PixelSpacing)
p0 = np.array([float(v) for v in first.ImagePositionPatient])
p1 = np.array([float(v) for v in by[series[-1]][0].ImagePositionPatient])
a = np.eye(4)
a[:3, 0] = o[:3] * dx
a[:3, 1] = o[3:] * dy
a[:3, 2] = (p1 - p0) / max(nz - 1, 1)
a[:3, 3] = p0
a[:2, :] *= -1  # LPS -> RAS
w = np.arange(vol.size).reshape(vol.shape, order="F") % 997
print(json.dumps({
    "dims": [nx, ny, nz, nt],
    "affine": a[:3].tolist(),
    "checksum": float((vol * w).sum()),
    "modality": first.Modality,
    "sop_class": first.SOPClassUID,
}))
"#;

#[test]
fn pydicom_reads_the_zip_to_the_nifti_twin() {
    if !common::python_with("numpy, pydicom") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::small_cohort(1, 5, 40, 5, 4);
    cfg.cmr_format = CmrFormat::Dicom;
    let cohort = Cohort::new(cfg).unwrap();
    cohort
        .write(dir.path(), WriteOptions { overwrite: true }, &|| {})
        .unwrap();
    let cine = cohort.subject(0).unwrap().cine;
    let eid = cohort.config().eid(0);
    let zip = dir
        .path()
        .join("cmr")
        .join(eid.to_string())
        .join(mmcl_synth::dicom::cmr_zip_name(eid));
    let v = common::python_json(SCRIPT, &[zip.as_os_str()]);
    assert_eq!(v["dims"], serde_json::json!(cine.dims));
    assert_eq!(v["modality"], "MR");
    assert_eq!(v["sop_class"], "1.2.840.10008.5.1.4.1.1.4");
    let checksum: f64 = cine
        .image
        .iter()
        .enumerate()
        .map(|(i, &x)| f64::from(x) * (i % 997) as f64)
        .sum();
    assert_eq!(v["checksum"].as_f64().unwrap(), checksum);
    for (row, expected) in cine.affine.iter().enumerate() {
        for (col, e) in expected.iter().enumerate() {
            let got = v["affine"][row][col].as_f64().unwrap();
            assert!((got - e).abs() < 1e-4, "affine[{row}][{col}] {got} vs {e}");
        }
    }
}
