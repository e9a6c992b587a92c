//! The images of a zip → one X × Y × slices × frames volume (see the parent module's mapping).

use super::{Frame, MAX_VOXELS};
use crate::cmr::CmrStudy;

/// Direction cosines that differ by more than this are different orientations.
const ORIENTATION_TOLERANCE: f64 = 1e-3;
/// Pixel spacings that differ by more than this (mm) are different.
const SPACING_TOLERANCE: f64 = 1e-3;
/// Slice positions closer than this (mm) are the same slice.
const POSITION_TOLERANCE: f64 = 0.05;

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// The unit slice normal (row × column direction) of an orientation.
fn normal(o: [f64; 6], member: &str) -> Result<[f64; 3], String> {
    let row = [o[0], o[1], o[2]];
    let col = [o[3], o[4], o[5]];
    let unit = |v: [f64; 3]| (dot(v, v).sqrt() - 1.0).abs() < 1e-2;
    if !unit(row) || !unit(col) || dot(row, col).abs() > 1e-2 {
        return Err(format!(
            "{member}: ImageOrientationPatient {o:?} is not two orthogonal unit vectors"
        ));
    }
    let n = cross(row, col);
    let len = dot(n, n).sqrt();
    Ok([n[0] / len, n[1] / len, n[2] / len])
}

/// Checks that every image has the geometry of the first; returns the slice normal when every
/// image has an orientation.
fn common_geometry(frames: &[Frame]) -> Result<Option<[f64; 3]>, String> {
    let first = &frames[0];
    for f in frames {
        if (f.rows, f.columns) != (first.rows, first.columns) {
            return Err(format!(
                "{} is {} rows × {} columns but {} is {} × {}: every image of the stack must \
                 have the same size",
                f.member, f.rows, f.columns, first.member, first.rows, first.columns
            ));
        }
        if f.spacing
            .iter()
            .zip(first.spacing)
            .any(|(a, b)| (a - b).abs() > SPACING_TOLERANCE)
        {
            return Err(format!(
                "{} has PixelSpacing {:?} mm but {} has {:?} mm",
                f.member, f.spacing, first.member, first.spacing
            ));
        }
        match (f.orientation, first.orientation) {
            (Some(a), Some(b)) => {
                if a.iter()
                    .zip(b)
                    .any(|(x, y)| (x - y).abs() > ORIENTATION_TOLERANCE)
                {
                    return Err(format!(
                        "{} has ImageOrientationPatient {a:?} but {} has {b:?}: the slices \
                         are not parallel",
                        f.member, first.member
                    ));
                }
            }
            (None, None) => {}
            _ => {
                return Err(format!(
                    "ImageOrientationPatient is on {} but not on {}",
                    if f.orientation.is_some() {
                        &f.member
                    } else {
                        &first.member
                    },
                    if f.orientation.is_some() {
                        &first.member
                    } else {
                        &f.member
                    },
                ));
            }
        }
    }
    first
        .orientation
        .map(|o| normal(o, &first.member))
        .transpose()
}

/// Each image's position along the slice normal (larger = nearer slice 0).
fn positions(frames: &[Frame], normal: Option<[f64; 3]>) -> Result<Vec<f64>, String> {
    if let Some(n) = normal
        && frames.iter().all(|f| f.position.is_some())
    {
        return Ok(frames
            .iter()
            .map(|f| f.position.map_or(0.0, |p| dot(p, n)))
            .collect());
    }
    frames
        .iter()
        .map(|f| {
            f.slice_location.ok_or_else(|| {
                format!(
                    "{}: neither ImagePositionPatient with ImageOrientationPatient on every \
                     image nor SliceLocation: the slice order is unknown",
                    f.member
                )
            })
        })
        .collect()
}

/// Whether frames are ordered by trigger time (else by instance number).
fn frame_key(frames: &[Frame]) -> Result<bool, String> {
    if frames.iter().all(|f| f.trigger_ms.is_some()) {
        return Ok(true);
    }
    match frames.iter().find(|f| f.instance.is_none()) {
        None => Ok(false),
        Some(f) => Err(format!(
            "{}: neither TriggerTime nor InstanceNumber: the frame order is unknown",
            f.member
        )),
    }
}

/// Assembles the study.
pub(super) fn assemble(frames: Vec<Frame>) -> Result<CmrStudy, String> {
    if frames.is_empty() {
        return Err("holds no DICOM image (no member with PixelData)".into());
    }
    let normal = common_geometry(&frames)?;
    let keys = positions(&frames, normal)?;
    let by_trigger = frame_key(&frames)?;
    // Group by position, slice 0 first (largest position).
    let mut order: Vec<usize> = (0..frames.len()).collect();
    order.sort_by(|&a, &b| keys[b].total_cmp(&keys[a]));
    let mut slices: Vec<(f64, Vec<usize>)> = Vec::new();
    for i in order {
        match slices.last_mut() {
            Some((at, members)) if (*at - keys[i]).abs() <= POSITION_TOLERANCE => members.push(i),
            _ => slices.push((keys[i], vec![i])),
        }
    }
    for (_, members) in &mut slices {
        // A repeated acquisition of a slice: keep the later series.
        let keep = members
            .iter()
            .map(|&i| (frames[i].series_number, frames[i].series.as_str()))
            .max();
        members.retain(|&i| Some((frames[i].series_number, frames[i].series.as_str())) == keep);
        members.sort_by(|&a, &b| {
            let (fa, fb) = (&frames[a], &frames[b]);
            let time = if by_trigger {
                fa.trigger_ms
                    .unwrap_or(0.0)
                    .total_cmp(&fb.trigger_ms.unwrap_or(0.0))
            } else {
                std::cmp::Ordering::Equal
            };
            time.then(fa.instance.cmp(&fb.instance))
                .then(fa.member.cmp(&fb.member))
        });
    }
    let nt = slices[0].1.len();
    for (at, members) in &slices {
        if members.len() != nt {
            return Err(format!(
                "the slice at {at:.2} mm ({}) has {} frames but the slice at {:.2} mm ({}) has \
                 {nt}: every slice must have the same number of frames",
                frames[members[0]].member,
                members.len(),
                slices[0].0,
                frames[slices[0].1[0]].member
            ));
        }
    }
    let nz = slices.len();
    let first = &frames[slices[0].1[0]];
    let (nx, ny) = (first.columns, first.rows);
    let dz = if nz > 1 {
        (slices[0].0 - slices[nz - 1].0) / (nz - 1) as f64
    } else {
        first.thickness.ok_or_else(|| {
            format!(
                "{}: a single slice without SliceThickness has no slice size",
                first.member
            )
        })?
    };
    if !(dz.is_finite() && dz > 0.0) {
        return Err(format!("slice spacing {dz} mm is not positive"));
    }
    let total = [nx, ny, nz, nt]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&v| v <= MAX_VOXELS)
        .ok_or_else(|| format!("more than {MAX_VOXELS} voxels"))?;
    let mut image = Vec::with_capacity(total);
    for t in 0..nt {
        for (_, members) in &slices {
            image.extend_from_slice(&frames[members[t]].pixels);
        }
    }
    // Rounded to f32 as a NIfTI header stores them (see the module documentation).
    let f32_mm = |v: f64| f64::from(v as f32);
    Ok(CmrStudy {
        image,
        dims: [nx, ny, nz, nt],
        voxel_mm: [
            f32_mm(first.spacing[1]),
            f32_mm(first.spacing[0]),
            f32_mm(dz),
        ],
        labels: None,
    })
}
