//! 12-lead ECGs: the in-memory record, the file readers (CardioSoft, GE MUSE and HL7 aECG XML,
//! WFDB, NPY/NPZ), the reference preprocessing and the reference augmentations.

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

pub mod augment;
pub mod convert;
pub mod dicom;
#[cfg(feature = "hdf5")]
pub mod hdf5;
pub mod hl7;
pub mod muse;
pub mod npy;
pub mod preprocess;
pub mod wfdb;
pub mod xml;

/// The canonical lead order of every ECG in this workspace.
pub const LEADS: [&str; 12] = [
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
];

/// Number of leads of a standard ECG.
pub const NUM_LEADS: usize = 12;

/// The eight independent leads, I, II and V1–V6: III, aVR, aVL and aVF are linear
/// combinations of I and II. The reduced reproduction's encoders read these.
pub const INDEPENDENT_LEADS: [&str; 8] = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"];

/// The lowest sampling rate, in Hz, accepted for an ECG (see [`MAX_SAMPLE_RATE_HZ`]).
///
/// Together the pair spans every clinical and research ECG recorder: resting and Holter
/// devices record at 100–1000 Hz (older Holters at 125 Hz, and PTB-XL also ships 100 Hz
/// copies), high-resolution and pacemaker-spike research systems at up to 10–15 kHz. A rate
/// outside the range is a corrupt or hostile file, and taking it at face value would make
/// resampling produce absurd lengths (0.005 Hz → 500 Hz multiplies the length by 100 000).
pub const MIN_SAMPLE_RATE_HZ: f64 = 50.0;

/// The highest sampling rate, in Hz, accepted for an ECG (see [`MIN_SAMPLE_RATE_HZ`]).
pub const MAX_SAMPLE_RATE_HZ: f64 = 20_000.0;

/// The most samples per lead an [`Ecg`] may hold, from a file or from resampling.
///
/// 2²² samples are over two hours at 500 Hz and over three minutes at
/// [`MAX_SAMPLE_RATE_HZ`], far beyond the 10-second resting strips the models consume, while
/// one 12-lead f32 record stays near 200 MB. Readers refuse declared lengths above it before
/// allocating anything from them.
pub const MAX_SAMPLES_PER_LEAD: usize = 1 << 22;

/// Checks that `rate` (Hz) is a plausible ECG sampling rate: finite and within
/// [`MIN_SAMPLE_RATE_HZ`]`..=`[`MAX_SAMPLE_RATE_HZ`].
///
/// This is the one check that [`Ecg::new`], every reader and every resampling path go
/// through; readers wrap the error with the file's name.
///
/// # Errors
/// [`Error::InvalidInput`] describing the rate and the accepted range.
pub fn check_sample_rate(rate: f64) -> Result<()> {
    if rate.is_finite() && (MIN_SAMPLE_RATE_HZ..=MAX_SAMPLE_RATE_HZ).contains(&rate) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "sample rate {rate} Hz is outside the plausible ECG range \
             {MIN_SAMPLE_RATE_HZ}–{MAX_SAMPLE_RATE_HZ} Hz"
        )))
    }
}

/// Checks that `samples` per lead is within [`MAX_SAMPLES_PER_LEAD`].
///
/// # Errors
/// [`Error::InvalidInput`] naming the count and the limit.
pub fn check_samples_per_lead(samples: usize) -> Result<()> {
    if samples <= MAX_SAMPLES_PER_LEAD {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "{samples} samples per lead is more than the limit of {MAX_SAMPLES_PER_LEAD}"
        )))
    }
}

/// The canonical index of a lead name, in any capitalisation (`aVR`, `AVR`, `avr`), with
/// surrounding whitespace ignored; `None` for a name that is not one of the 12 standard leads.
pub fn lead_index(name: &str) -> Option<usize> {
    let name = name.trim();
    LEADS.iter().position(|l| l.eq_ignore_ascii_case(name))
}

/// The canonical indices of the leads named in `names` (any capitalisation), in the order
/// given; all 12 in canonical order when `names` is `None`.
///
/// # Errors
/// Why the list is unusable, in words for the caller to prefix with its setting's name: an
/// empty list, a name that is not one of the 12 standard leads, or a lead named twice.
pub fn lead_selection(names: Option<&[String]>) -> std::result::Result<Vec<usize>, String> {
    let Some(names) = names else {
        return Ok((0..NUM_LEADS).collect());
    };
    if names.is_empty() {
        return Err("no lead is named (leave the setting out to keep all 12)".into());
    }
    let mut indices = Vec::with_capacity(names.len());
    for name in names {
        let index = lead_index(name).ok_or_else(|| {
            format!(
                "{name:?} is not one of the 12 standard leads ({})",
                LEADS.join(", ")
            )
        })?;
        if indices.contains(&index) {
            return Err(format!("lead {} is named twice", LEADS[index]));
        }
        indices.push(index);
    }
    Ok(indices)
}

/// The rows `leads` of a lead-major recording of `samples` per lead, in that order (indices
/// from [`lead_selection`]; a row outside `data` is skipped rather than indexed).
pub fn select_leads(data: &[f32], samples: usize, leads: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(leads.len() * samples);
    for &lead in leads {
        if let Some(row) = data.get(lead * samples..(lead + 1) * samples) {
            out.extend_from_slice(row);
        }
    }
    out
}

/// A 12-lead ECG in canonical lead order (I, II, III, aVR, aVL, aVF, V1–V6), in millivolts.
///
/// The samples are stored lead-major: lead `l`, sample `t` is `data[l * samples + t]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ecg {
    data: Vec<f32>,
    samples: usize,
    sample_rate: f64,
}

impl Ecg {
    /// An ECG from lead-major samples (`12 × samples`) at `sample_rate` Hz.
    ///
    /// # Errors
    /// When there are no samples or more than [`MAX_SAMPLES_PER_LEAD`], the length is not
    /// `12 × samples`, or the rate fails [`check_sample_rate`].
    pub fn new(data: Vec<f32>, samples: usize, sample_rate: f64) -> Result<Self> {
        if samples == 0 {
            return Err(Error::InvalidInput(
                "an ECG needs at least one sample".into(),
            ));
        }
        check_samples_per_lead(samples)?;
        // Cannot overflow: `samples` is at most MAX_SAMPLES_PER_LEAD.
        let values = NUM_LEADS * samples;
        if data.len() != values {
            return Err(Error::InvalidInput(format!(
                "an ECG of {samples} samples needs {values} values, got {}",
                data.len()
            )));
        }
        check_sample_rate(sample_rate)?;
        Ok(Self {
            data,
            samples,
            sample_rate,
        })
    }

    /// Assembles an ECG from named leads in any order and capitalisation.
    ///
    /// Leads that are not among the 12 standard ones are ignored. `source` names the file in
    /// errors.
    ///
    /// # Errors
    /// A missing or repeated lead, or leads of different lengths.
    pub fn from_named_leads<S: AsRef<str>>(
        source: &Path,
        leads: impl IntoIterator<Item = (S, Vec<f32>)>,
        sample_rate: f64,
    ) -> Result<Self> {
        let mut slots: [Option<Vec<f32>>; NUM_LEADS] = Default::default();
        for (name, values) in leads {
            let name = name.as_ref();
            let Some(index) = lead_index(name) else {
                continue;
            };
            if slots[index].is_some() {
                return Err(Error::format(
                    source,
                    format!("lead {} appears twice", LEADS[index]),
                ));
            }
            slots[index] = Some(values);
        }
        let missing: Vec<&str> = slots
            .iter()
            .zip(LEADS)
            .filter_map(|(s, name)| s.is_none().then_some(name))
            .collect();
        if !missing.is_empty() {
            return Err(Error::format(
                source,
                format!("missing lead(s) {}", missing.join(", ")),
            ));
        }
        let samples = slots[0].as_ref().map_or(0, Vec::len);
        let mut data = Vec::with_capacity(NUM_LEADS * samples);
        for (slot, name) in slots.into_iter().zip(LEADS) {
            let values = slot.unwrap_or_default();
            check_count(source, values.len(), samples, || {
                format!(
                    "lead {name} has {} samples but lead I has {samples}",
                    values.len()
                )
            })?;
            data.extend_from_slice(&values);
        }
        if samples == 0 {
            return Err(Error::format(source, "the leads hold no samples"));
        }
        Self::new(data, samples, sample_rate).map_err(|e| in_file(source, e))
    }

    /// Lead-major samples, `12 × samples()`.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Takes the lead-major samples.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Samples per lead.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Sampling rate in Hz.
    pub fn sample_rate(&self) -> f64 {
        self.sample_rate
    }

    /// Duration in seconds.
    pub fn duration_s(&self) -> f64 {
        self.samples as f64 / self.sample_rate
    }

    /// The samples of lead `index` (canonical order).
    ///
    /// # Panics
    /// When `index >= 12`.
    pub fn lead(&self, index: usize) -> &[f32] {
        &self.data[index * self.samples..(index + 1) * self.samples]
    }

    /// The ECG as a `[12, T]` f32 tensor on `device`.
    ///
    /// # Shapes
    /// Output `[12, T]`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.data,
            (NUM_LEADS, self.samples),
            device,
        )?)
    }
}

/// A file format of ECG recordings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcgFormat {
    /// UK Biobank CardioSoft XML (field 20205), root element `CardiologyXML`.
    CardioSoftXml,
    /// GE MUSE resting-ECG XML, root element `RestingECG` ([`muse`]).
    MuseXml,
    /// HL7 v3 annotated ECG (FDA aECG), root element `AnnotatedECG` ([`hl7`]).
    Hl7Aecg,
    /// A WFDB record (`.hea` header + signal file).
    Wfdb,
    /// A NumPy `.npy` array, `(12, T)` or `(N, 12, T)`.
    Npy,
    /// A NumPy `.npz` archive of such arrays.
    Npz,
    /// A DICOM 12-lead or general ECG waveform object (`.dcm`, [`dicom`]).
    DicomWaveform,
    /// An HDF5 file of `tracings` (N × T × 12, the CODE-15 layout; `.h5`, `.hdf5`), read with
    /// the crate feature `hdf5`.
    Hdf5,
}

impl EcgFormat {
    /// The format of a file from its extension alone (`.xml`, `.hea`, `.npy`, `.npz`, `.dcm`,
    /// `.h5`/`.hdf5`, any case),
    /// without reading it: use it to tell ECG files from others.
    ///
    /// Every `.xml` file gives [`EcgFormat::CardioSoftXml`], which here stands for the XML
    /// family (see [`EcgFormat::is_xml`]): which vendor wrote it is in the file, and
    /// [`EcgFormat::detect`] reads it.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "xml" => Some(Self::CardioSoftXml),
            "hea" => Some(Self::Wfdb),
            "npy" => Some(Self::Npy),
            "npz" => Some(Self::Npz),
            "dcm" => Some(Self::DicomWaveform),
            "h5" | "hdf5" => Some(Self::Hdf5),
            _ => None,
        }
    }

    /// The format of a file: from its extension, and for `.xml` from its root element
    /// (`CardiologyXML`, `RestingECG` or `AnnotatedECG`, read from the first few KB by
    /// [`xml::root_element`]).
    ///
    /// # Errors
    /// An unknown extension; for `.xml`, an unreadable or empty file, or an unknown root element
    /// (the error names the file and the root found).
    pub fn detect(path: &Path) -> Result<Self> {
        match Self::from_path(path) {
            Some(format) if format.is_xml() => {
                let root = xml::root_element(path)?;
                Self::from_xml_root(&root).ok_or_else(|| {
                    Error::format(
                        path,
                        format!(
                            "root element is <{root}>, expected <CardiologyXML> (CardioSoft), \
                             <RestingECG> (GE MUSE) or <AnnotatedECG> (HL7 aECG)"
                        ),
                    )
                })
            }
            Some(format) => Ok(format),
            None => Err(Error::format(
                path,
                "unknown ECG file type (expected .xml, .hea, .npy, .npz, .dcm, .h5 or .hdf5)",
            )),
        }
    }

    /// The XML format whose root element is `root` (a local name, without namespace prefix).
    pub fn from_xml_root(root: &str) -> Option<Self> {
        match root {
            "CardiologyXML" => Some(Self::CardioSoftXml),
            "RestingECG" => Some(Self::MuseXml),
            "AnnotatedECG" => Some(Self::Hl7Aecg),
            _ => None,
        }
    }

    /// Whether the format is one of the XML formats (all read from `.xml` files).
    pub fn is_xml(self) -> bool {
        matches!(self, Self::CardioSoftXml | Self::MuseXml | Self::Hl7Aecg)
    }
}

/// One recording read from a file: its identifier (the file stem, or `stem/key` and
/// `stem_i` for arrays holding several) and the ECG.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedEcg {
    /// Record identifier, usable as an output file stem.
    pub id: String,
    /// The recording.
    pub ecg: Ecg,
}

/// Reads every recording of an ECG file of any supported format.
///
/// `array_rate` is the sampling rate assumed for NPY/NPZ arrays (which carry none) and for
/// HDF5 files without a rate attribute.
///
/// XML files are told apart by their root element ([`EcgFormat::detect`]); of those, the
/// rhythm strip is returned.
///
/// # Errors
/// An unknown extension or XML root element, or whatever the format's reader reports (naming
/// the file).
pub fn read_any(path: &Path, array_rate: f64) -> Result<Vec<NamedEcg>> {
    let one = |ecg| {
        Ok(vec![NamedEcg {
            id: file_stem(path),
            ecg,
        }])
    };
    match EcgFormat::detect(path)? {
        EcgFormat::CardioSoftXml => one(xml::read_cardiosoft_xml(path)?.rhythm),
        EcgFormat::MuseXml => one(muse::read_muse_xml(path)?.rhythm),
        EcgFormat::Hl7Aecg => one(hl7::read_hl7_aecg(path)?),
        EcgFormat::Wfdb => one(wfdb::read_record(path)?.ecg),
        EcgFormat::Npy => npy::read_npy(path, array_rate),
        EcgFormat::Npz => npy::read_npz(path, array_rate),
        EcgFormat::DicomWaveform => one(dicom::read_dicom_ecg(path)?),
        #[cfg(feature = "hdf5")]
        EcgFormat::Hdf5 => hdf5::read_hdf5(path, array_rate),
        #[cfg(not(feature = "hdf5"))]
        EcgFormat::Hdf5 => Err(Error::format(
            path,
            "HDF5 ECG files need mmcl built with the `hdf5` feature (and the system libhdf5: \
             Debian's libhdf5-dev)",
        )),
    }
}

/// Adds the limb leads III, aVR, aVL and aVF computed from I and II when a file holds only
/// the eight acquired leads (I, II, V1–V6), as GE MUSE and many HL7 aECG files do.
///
/// The four are derived only when all four are absent; a file holding some of them is left
/// as it is, so that [`Ecg::from_named_leads`] reports the ones missing. The formulas are
/// Einthoven's and Goldberger's: III = II − I, aVR = −(I + II)/2, aVL = I − II/2,
/// aVF = II − I/2.
///
/// # Errors
/// Leads I and II of different lengths (naming `source`).
pub(crate) fn derive_limb_leads(source: &Path, leads: &mut Vec<(String, Vec<f32>)>) -> Result<()> {
    let has = |index: usize| {
        leads
            .iter()
            .any(|(name, _)| lead_index(name) == Some(index))
    };
    if (2..6).any(has) {
        return Ok(());
    }
    let find = |index: usize| {
        leads
            .iter()
            .find(|(name, _)| lead_index(name) == Some(index))
            .map(|(_, values)| values)
    };
    // Without I or II nothing can be derived; the missing leads are reported later.
    let (Some(one), Some(two)) = (find(0), find(1)) else {
        return Ok(());
    };
    check_count(source, two.len(), one.len(), || {
        format!(
            "lead II has {} samples but lead I has {}",
            two.len(),
            one.len()
        )
    })?;
    let derive = |f: fn(f32, f32) -> f32| -> Vec<f32> {
        one.iter().zip(two).map(|(&i, &ii)| f(i, ii)).collect()
    };
    let derived = [
        ("III", derive(|i, ii| ii - i)),
        ("aVR", derive(|i, ii| -(i + ii) / 2.0)),
        ("aVL", derive(|i, ii| i - ii / 2.0)),
        ("aVF", derive(|i, ii| ii - i / 2.0)),
    ];
    leads.extend(derived.map(|(name, values)| (name.to_string(), values)));
    Ok(())
}

/// The file stem of `path` as a string (lossy), or `record` when it has none.
pub(crate) fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "record".to_string())
}

/// Forward and inverse FFT plans of length `n`, from a per-thread planner cache (planning a
/// mixed-radix FFT costs more than running it).
pub(crate) fn fft_plans(
    n: usize,
) -> (
    std::sync::Arc<dyn rustfft::Fft<f64>>,
    std::sync::Arc<dyn rustfft::Fft<f64>>,
) {
    thread_local! {
        static PLANNER: std::cell::RefCell<rustfft::FftPlanner<f64>> =
            std::cell::RefCell::new(rustfft::FftPlanner::new());
    }
    PLANNER.with(|p| {
        let mut p = p.borrow_mut();
        (p.plan_fft_forward(n), p.plan_fft_inverse(n))
    })
}

/// Refuses a count `found` that differs from the `expected` one, with a format error naming
/// `path`; `describe` writes its message, only when it is needed.
pub(crate) fn check_count(
    path: &Path,
    found: usize,
    expected: usize,
    describe: impl FnOnce() -> String,
) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::format(path, describe()))
    }
}

/// Attributes an error about values (an [`Error::InvalidInput`]) to the file they came from;
/// errors that already name a file pass through.
pub(crate) fn in_file(path: &Path, error: Error) -> Error {
    match error {
        Error::InvalidInput(reason) => Error::format(path, reason),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_names_in_any_case() {
        assert_eq!(lead_index("AVR"), Some(3));
        assert_eq!(lead_index(" avl "), Some(4));
        assert_eq!(lead_index("v6"), Some(11));
        assert_eq!(lead_index("iii"), Some(2));
        assert_eq!(lead_index("V7"), None);
    }

    #[test]
    fn limb_leads_are_derived_from_i_and_ii() {
        let p = Path::new("x.xml");
        let mut leads: Vec<(String, Vec<f32>)> = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
            .iter()
            .map(|l| (l.to_string(), vec![1.0, 0.5]))
            .collect();
        leads[1].1 = vec![3.0, -1.0];
        derive_limb_leads(p, &mut leads).unwrap();
        let ecg = Ecg::from_named_leads(p, leads, 500.0).unwrap();
        assert_eq!(ecg.lead(2), &[2.0, -1.5]); // III = II - I
        assert_eq!(ecg.lead(3), &[-2.0, 0.25]); // aVR = -(I + II) / 2
        assert_eq!(ecg.lead(4), &[-0.5, 1.0]); // aVL = I - II / 2
        assert_eq!(ecg.lead(5), &[2.5, -1.25]); // aVF = II - I / 2
        // With one limb lead present nothing is derived: the others are reported missing.
        let mut leads = vec![("I".to_string(), vec![1.0]), ("aVF".to_string(), vec![1.0])];
        derive_limb_leads(p, &mut leads).unwrap();
        assert_eq!(leads.len(), 2);
        let mut leads = vec![
            ("I".to_string(), vec![1.0]),
            ("II".to_string(), vec![1.0, 2.0]),
        ];
        let err = derive_limb_leads(p, &mut leads).unwrap_err().to_string();
        assert!(
            err.contains("x.xml") && err.contains("lead II has 2"),
            "{err}"
        );
    }

    #[test]
    fn xml_roots_name_their_format() {
        assert_eq!(
            EcgFormat::from_xml_root("RestingECG"),
            Some(EcgFormat::MuseXml)
        );
        assert_eq!(
            EcgFormat::from_xml_root("AnnotatedECG"),
            Some(EcgFormat::Hl7Aecg)
        );
        assert_eq!(
            EcgFormat::from_xml_root("CardiologyXML"),
            Some(EcgFormat::CardioSoftXml)
        );
        assert_eq!(EcgFormat::from_xml_root("xml"), None);
        assert_eq!(
            EcgFormat::from_path(Path::new("a.XML")),
            Some(EcgFormat::CardioSoftXml)
        );
        assert!(EcgFormat::Hl7Aecg.is_xml() && !EcgFormat::Npy.is_xml());
    }

    #[test]
    fn leads_are_reordered_and_checked() {
        let p = Path::new("x.xml");
        let mut leads: Vec<(String, Vec<f32>)> = LEADS
            .iter()
            .enumerate()
            .rev()
            .map(|(i, l)| (l.to_lowercase(), vec![i as f32; 3]))
            .collect();
        let ecg = Ecg::from_named_leads(p, leads.clone(), 500.0).unwrap();
        for i in 0..12 {
            assert_eq!(ecg.lead(i), &[i as f32; 3]);
        }
        leads[0].1.pop();
        let err = Ecg::from_named_leads(p, leads.clone(), 500.0).unwrap_err();
        assert!(err.to_string().contains("V6"), "{err}");
        leads.remove(0);
        let err = Ecg::from_named_leads(p, leads, 500.0).unwrap_err();
        assert!(err.to_string().contains("missing lead(s) V6"), "{err}");
    }
}
