//! The GE CardioSoft XML layout of UK Biobank's resting ECG (field 20205).
//!
//! Element names and order follow the files UK Biobank ships: root `CardiologyXML`, patient and
//! filter information, the device's interpretation, `RestingECGMeasurements` with the interval
//! and axis measurements and the `MedianSamples` (median beats), and `StripData` with the 10 s
//! rhythm strip: `SampleRate`, `Resolution units="uVperLsb"` and one `WaveformData lead="…"`
//! per lead holding comma-separated integers broken over lines. The declaration names
//! ISO-8859-1, the encoding of the real files (all text written here is ASCII).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use mmcl_core::rng::SplitMix64;

use crate::Result;
use crate::ecg::{Ecg, LEAD_NAMES, UV_PER_LSB};
use crate::io::write_file_atomic;
use crate::state::HiddenState;

/// Values per line inside `WaveformData`.
const VALUES_PER_LINE: usize = 20;

/// The file name UK Biobank gives a participant's first imaging-visit resting ECG.
pub fn ecg_file_name(eid: u64) -> String {
    format!("{eid}_20205_2_0.xml")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn waveforms(out: &mut String, leads: &[Vec<i32>], indent: &str) {
    for (name, lead) in LEAD_NAMES.iter().zip(leads) {
        let _ = write!(out, "{indent}<WaveformData lead=\"{name}\">");
        for (i, v) in lead.iter().enumerate() {
            if i > 0 {
                out.push(',');
                if i % VALUES_PER_LINE == 0 {
                    out.push('\n');
                    out.push_str(indent);
                    out.push('\t');
                }
            }
            let _ = write!(out, "{v}");
        }
        out.push_str("</WaveformData>\n");
    }
}

/// The XML text of a subject's resting ECG.
pub fn cardiosoft_xml(state: &HiddenState, ecg: &Ecg) -> String {
    let m = &ecg.measurements;
    let strip_len = ecg.strip.first().map_or(0, Vec::len);
    let median_len = ecg.median.first().map_or(0, Vec::len);
    let mut x = String::with_capacity(8 * 12 * (strip_len + median_len) + 4096);
    // A plausible acquisition time at the imaging visit (2014-2020), fixed by the eid.
    let mut when = SplitMix64::new(state.eid ^ 0x2020_5EC6);
    let mut pick = |lo: u64, hi: u64| lo + when.next_u64() % (hi - lo + 1);
    let (year, month, day) = (pick(2014, 2020), pick(1, 12), pick(1, 28));
    let (hour, minute, second) = (pick(8, 18), pick(0, 59), pick(0, 59));

    x.push_str("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>\n");
    x.push_str("<!DOCTYPE CardiologyXML SYSTEM \"CardiologyXML.dtd\">\n");
    x.push_str("<CardiologyXML>\n");
    x.push_str("\t<ObservationType>RestECG</ObservationType>\n");
    let _ = writeln!(
        x,
        "\t<ObservationDateTime>\n\t\t<Hour>{hour}</Hour>\n\t\t<Minute>{minute}</Minute>\n\t\t<Second>{second}</Second>\n\t\t<Day>{day}</Day>\n\t\t<Month>{month}</Month>\n\t\t<Year>{year}</Year>\n\t</ObservationDateTime>"
    );
    x.push_str("\t<ClinicalInfo>\n\t\t<DeviceInfo>\n\t\t\t<Desc>CardioSoft (mmcl-synth)</Desc>\n\t\t\t<SoftwareVer>6.73</SoftwareVer>\n\t\t\t<AnalysisVer>mmcl-synth</AnalysisVer>\n\t\t</DeviceInfo>\n\t</ClinicalInfo>\n");
    let _ = writeln!(
        x,
        "\t<PatientInfo>\n\t\t<PID>{}</PID>\n\t\t<Age units=\"years\">{}</Age>\n\t\t<Gender>{}</Gender>\n\t\t<Height units=\"cm\">{}</Height>\n\t\t<Weight units=\"kg\">{}</Weight>\n\t\t<PaceMaker>no</PaceMaker>\n\t</PatientInfo>",
        state.eid,
        state.age.floor() as u32,
        if state.male { "MALE" } else { "FEMALE" },
        state.height_cm.round() as u32,
        state.weight_kg.round() as u32,
    );
    x.push_str("\t<FilterSetting>\n\t\t<CubicSpline>no</CubicSpline>\n\t\t<Filter50Hz>no</Filter50Hz>\n\t\t<Filter60Hz>no</Filter60Hz>\n\t\t<LowPass units=\"Hz\">150</LowPass>\n\t\t<HighPass units=\"Hz\">0.04</HighPass>\n\t</FilterSetting>\n");
    x.push_str("\t<Device-Type>CARDIOVIT</Device-Type>\n");
    x.push_str("\t<Interpretation>\n\t\t<Diagnosis>\n");
    let (conclusion, statements) = ecg
        .interpretation
        .split_last()
        .map_or((None, &ecg.interpretation[..]), |(last, rest)| {
            (Some(last), rest)
        });
    for s in statements {
        let _ = writeln!(x, "\t\t\t<DiagnosisText>{}</DiagnosisText>", escape(s));
    }
    x.push_str("\t\t</Diagnosis>\n\t\t<Conclusion>\n");
    if let Some(c) = conclusion {
        let _ = writeln!(x, "\t\t\t<ConclusionText>{}</ConclusionText>", escape(c));
    }
    x.push_str("\t\t</Conclusion>\n\t</Interpretation>\n");

    x.push_str("\t<RestingECGMeasurements>\n");
    let mut measure = |name: &str, units: &str, value: Option<String>| {
        if let Some(v) = value {
            let _ = writeln!(x, "\t\t<{name} units=\"{units}\">{v}</{name}>");
        }
    };
    let s = |v: u32| Some(v.to_string());
    let so = |v: Option<u32>| v.map(|v| v.to_string());
    measure("VentricularRate", "BPM", s(m.ventricular_rate));
    measure("PQInterval", "ms", so(m.pq_interval));
    measure("PDuration", "ms", so(m.p_duration));
    measure("QRSDuration", "ms", s(m.qrs_duration));
    measure("QTInterval", "ms", s(m.qt_interval));
    measure("QTCInterval", "ms", s(m.qtc_interval));
    measure("RRInterval", "ms", s(m.rr_interval));
    measure("PPInterval", "ms", so(m.pp_interval));
    measure("PAxis", "degrees", m.p_axis.map(|v| v.to_string()));
    measure("RAxis", "degrees", Some(m.r_axis.to_string()));
    measure("TAxis", "degrees", Some(m.t_axis.to_string()));
    let _ = writeln!(x, "\t\t<QRSNum>{}</QRSNum>", m.qrs_num);
    let mut measure = |name: &str, value: Option<u32>| {
        if let Some(v) = value {
            let _ = writeln!(x, "\t\t<{name} units=\"ms\">{v}</{name}>");
        }
    };
    measure("POnset", m.p_onset);
    measure("POffset", m.p_offset);
    measure("QOnset", Some(m.q_onset));
    measure("QOffset", Some(m.q_offset));
    measure("TOffset", Some(m.t_offset));
    let median_ms = (median_len as u64 * 1000 / ecg.sample_rate_hz.max(1) as u64) as u32;
    x.push_str("\t\t<MedianSamples>\n\t\t\t<NumberOfLeads>12</NumberOfLeads>\n");
    let _ = writeln!(
        x,
        "\t\t\t<SampleRate units=\"Hz\">{}</SampleRate>\n\t\t\t<ChannelSampleCountTotal>{median_len}</ChannelSampleCountTotal>\n\t\t\t<Resolution units=\"uVperLsb\">{}</Resolution>\n\t\t\t<FirstValid units=\"ms\">0</FirstValid>\n\t\t\t<LastValid units=\"ms\">{}</LastValid>",
        ecg.sample_rate_hz,
        UV_PER_LSB,
        median_ms.saturating_sub(1000 / ecg.sample_rate_hz.max(1)),
    );
    waveforms(&mut x, &ecg.median, "\t\t\t");
    x.push_str("\t\t</MedianSamples>\n\t</RestingECGMeasurements>\n");

    x.push_str("\t<StripData>\n\t\t<NumberOfLeads>12</NumberOfLeads>\n");
    let _ = writeln!(
        x,
        "\t\t<SampleRate units=\"Hz\">{}</SampleRate>\n\t\t<ChannelSampleCountTotal>{strip_len}</ChannelSampleCountTotal>\n\t\t<Resolution units=\"uVperLsb\">{}</Resolution>",
        ecg.sample_rate_hz, UV_PER_LSB,
    );
    waveforms(&mut x, &ecg.strip, "\t\t");
    x.push_str("\t</StripData>\n</CardiologyXML>\n");
    x
}

/// Writes a subject's resting ECG to `path`, atomically.
///
/// # Errors
/// a file error ([`crate::Error::Core`]) naming the file.
pub fn write_cardiosoft_xml(path: &Path, state: &HiddenState, ecg: &Ecg) -> Result<()> {
    let text = cardiosoft_xml(state, ecg);
    write_file_atomic(path, |w| w.write_all(text.as_bytes()))
}
