//! Golden-image-free figure tests: every figure decodes, has the expected size, and is not
//! blank (many non-background pixels, several distinct colours); bad inputs are errors that
//! leave no file behind.

use std::collections::HashSet;
use std::path::Path;

use mmcl_eval::Matrix;
use mmcl_eval::metrics::roc_curve;
use mmcl_eval::plot::{
    CmrFigure, Colormap, EcgFigure, EcgLayout, RocFigure, RocSeries, ScatterFigure, ScatterPanel,
    TrainingCurvesFigure,
};
use mmcl_eval::runlog::RunLog;

/// Decodes a PNG and checks it is a real picture; returns its size.
fn check_png(path: &Path, min_colours: usize) -> (u32, u32) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
        .to_rgb8();
    let background = image::Rgb([255u8, 255, 255]);
    let non_background = img.pixels().filter(|p| **p != background).count();
    let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    let total = (img.width() * img.height()) as usize;
    assert!(
        non_background * 20 > total,
        "{}: only {non_background} of {total} pixels are drawn",
        path.display()
    );
    assert!(
        colours.len() >= min_colours,
        "{}: {} distinct colours",
        path.display(),
        colours.len()
    );
    // Text was rendered: near-black pixels exist.
    assert!(img.pixels().any(|p| p.0.iter().all(|&c| c < 60)));
    img.dimensions()
}

fn ecg(t: usize) -> Matrix<f32> {
    let data = (0..12 * t)
        .map(|k| {
            let (lead, i) = (k / t, k % t);
            (i as f32 * 0.05 + lead as f32).sin() * 0.8
        })
        .collect();
    Matrix::new(12, t, data).unwrap()
}

#[test]
fn ecg_figures_render() {
    let dir = tempfile::tempdir().unwrap();
    let signal = ecg(2500);
    let path = dir.path().join("ecg.png");
    EcgFigure::new(&signal, 250.0).save(&path).unwrap();
    let (w, h) = check_png(&path, 20);
    // 10 s at 25 mm/s, 4 px/mm: 1000 px of trace plus margins; 4 rows of 30 mm.
    assert_eq!((w, h), (1080, 560));

    let importance =
        Matrix::new(12, 25, (0..300).map(|k| (k as f32 / 150.0) - 1.0).collect()).unwrap();
    let path = dir.path().join("ecg_rows.png");
    EcgFigure::new(&signal, 250.0)
        .with_layout(EcgLayout::Rows12)
        .with_importance(&importance)
        .save(&path)
        .unwrap();
    let (w, h) = check_png(&path, 40);
    assert_eq!((w, h), (1168, 1040));
    let img = image::open(&path).unwrap().to_rgb8();
    // The overlay's strongest red (importance 1) lies on the last patches of lead V6, and stays
    // clearly red on the (grey, under an overlay) paper.
    let reddish = img
        .pixels()
        .filter(|p| {
            let [r, g, b] = p.0.map(i32::from);
            r > 150 && r > g + 50 && r > b + 30
        })
        .count();
    assert!(reddish > 500, "{reddish} overlay pixels");

    let svg = dir.path().join("ecg.svg");
    EcgFigure::new(&signal, 250.0).save(&svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("aVR"));
}

#[test]
fn a_lead_subset_is_drawn_one_named_row_each() {
    let dir = tempfile::tempdir().unwrap();
    let full = ecg(1000);
    let names = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"];
    let rows: Vec<f32> = [0usize, 1, 6, 7, 8, 9, 10, 11]
        .iter()
        .flat_map(|&l| full.row(l).to_vec())
        .collect();
    let subset = Matrix::new(8, 1000, rows).unwrap();
    let importance = Matrix::new(8, 10, vec![0.5f32; 80]).unwrap();
    let svg = dir.path().join("subset.svg");
    let figure = EcgFigure::new(&subset, 250.0)
        .with_layout(EcgLayout::Rows12)
        .with_lead_names(names.iter().map(|n| n.to_string()).collect())
        .with_importance(&importance);
    figure.save(&svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("V6") && text.contains("8-lead ECG") && !text.contains("aVR"));
    let png = dir.path().join("subset.png");
    figure.save(&png).unwrap();
    // 8 rows of 20 mm instead of 12.
    let (_, h) = check_png(&png, 40);
    assert_eq!(h, 720);

    // The 4 × 3 grid needs all 12; a name per row is required.
    let path = dir.path().join("x.png");
    let grid = EcgFigure::new(&subset, 250.0)
        .with_lead_names(names.iter().map(|n| n.to_string()).collect());
    assert!(grid.save(&path).is_err());
    let unnamed = EcgFigure::new(&subset, 250.0).with_layout(EcgLayout::Rows12);
    let err = unnamed.save(&path).unwrap_err().to_string();
    assert!(err.contains("got 8 (12 names)"), "{err}");
}

#[test]
fn cmr_figure_renders_with_heatmap() {
    let dir = tempfile::tempdir().unwrap();
    let slice = Matrix::new(
        64,
        80,
        (0..64 * 80)
            .map(|k| ((k % 80) as f32 / 80.0) * ((k / 80) as f32 / 64.0))
            .collect(),
    )
    .unwrap();
    let heat = Matrix::new(4, 5, (0..20).map(|k| k as f32).collect()).unwrap();
    let path = dir.path().join("cmr.png");
    let mut fig = CmrFigure::new(&slice).with_heatmap(&heat);
    fig.colormap = Colormap::Viridis;
    fig.save(&path).unwrap();
    let (w, h) = check_png(&path, 100);
    // 80 columns scaled to 420 px wide, 64 rows to 336 px, plus the frame.
    assert_eq!((w, h), (530, 386));
    // Raster figures refuse SVG.
    assert!(fig.save(&dir.path().join("cmr.svg")).is_err());
    assert!(!dir.path().join("cmr.svg").exists());
}

#[test]
fn roc_scatter_and_curves_render() {
    let dir = tempfile::tempdir().unwrap();
    let labels: Vec<f64> = (0..200).map(|i| (i % 3 == 0) as u8 as f64).collect();
    let scores: Vec<f64> = (0..200)
        .map(|i| ((i * 37) % 101) as f64 / 100.0 + labels[i] * 0.3)
        .collect();
    let curve = roc_curve(&labels, &scores).unwrap();
    let roc = RocFigure {
        series: vec![
            RocSeries {
                name: "a".into(),
                curve: curve.clone(),
                auroc: 0.7,
                ci: Some((0.6, 0.8)),
            },
            RocSeries {
                name: "b".into(),
                curve,
                auroc: 0.7,
                ci: None,
            },
        ],
        title: "ROC".into(),
    };
    let path = dir.path().join("roc.png");
    roc.save(&path).unwrap();
    assert_eq!(check_png(&path, 10), (640, 600));
    roc.save(&dir.path().join("roc.svg")).unwrap();

    let truth: Vec<f64> = (0..100).map(|i| i as f64).collect();
    let mut prediction: Vec<f64> = truth.iter().map(|t| t * 0.9 + 3.0).collect();
    prediction[5] = f64::NAN;
    let scatter = ScatterFigure {
        panels: (0..3)
            .map(|k| ScatterPanel {
                name: format!("p{k}"),
                truth: truth.clone(),
                prediction: prediction.clone(),
                r2: Some(0.9),
                r2_ci: (k == 1).then_some((0.85, 0.93)),
            })
            .collect(),
        title: "scatter".into(),
    };
    let path = dir.path().join("scatter.png");
    scatter.save(&path).unwrap();
    // Three panels: two columns, two rows.
    assert_eq!(check_png(&path, 10), (720, 720));

    let log = RunLog::parse(
        "{\"epoch\": 0, \"loss\": 2.0}\n{\"epoch\": 1, \"loss\": 1.0}\n{\"epoch\": 1, \"split\": \"val\", \"loss\": 1.5, \"auroc\": 0.7}\n",
        Path::new("log.jsonl"),
    )
    .unwrap();
    let path = dir.path().join("curves.png");
    TrainingCurvesFigure::new(&log).save(&path).unwrap();
    assert_eq!(check_png(&path, 10), (800, 340));
}

#[test]
fn bad_figure_inputs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let eleven = Matrix::new(11, 100, vec![0.0f32; 1100]).unwrap();
    let path = dir.path().join("x.png");
    let err = EcgFigure::new(&eleven, 500.0).save(&path).unwrap_err();
    assert!(err.to_string().contains("12 leads"), "{err}");
    let signal = ecg(500);
    let wrong = Matrix::new(6, 5, vec![0.0f32; 30]).unwrap();
    assert!(
        EcgFigure::new(&signal, 500.0)
            .with_importance(&wrong)
            .save(&path)
            .is_err()
    );
    assert!(
        EcgFigure::new(&signal, 500.0)
            .save(&dir.path().join("x.jpg"))
            .is_err()
    );
    assert!(EcgFigure::new(&signal, 0.0).save(&path).is_err());
    assert!(
        RocFigure {
            series: vec![],
            title: String::new()
        }
        .save(&path)
        .is_err()
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

/// Values whose span overflows f64 made plotters loop without end, and a single huge value
/// gave an axis without width: the first is an error naming the metric, the second a figure;
/// the same for a scatter panel.
#[test]
fn extreme_values_are_errors_or_figures_never_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.png");
    let log = |text: &str| RunLog::parse(text, Path::new("log.jsonl")).unwrap();
    let overflowing = log("{\"epoch\": 1e308, \"loss\": 1}\n{\"epoch\": -1e308, \"loss\": 2}\n");
    let err = TrainingCurvesFigure::new(&overflowing)
        .save(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("loss") && err.contains("overflows"), "{err}");
    assert!(!path.exists(), "nothing is left behind");
    for text in [
        "{\"epoch\": 1e20, \"loss\": 1e20}\n",
        "{\"epoch\": 0, \"loss\": 1e300}\n{\"epoch\": 1, \"loss\": -1e300}\n",
        "{\"epoch\": 0, \"loss\": 5e-324}\n",
    ] {
        TrainingCurvesFigure::new(&log(text)).save(&path).unwrap();
        assert_eq!(check_png(&path, 10), (400, 340), "{text}");
    }
    let panel = |values: Vec<f64>| ScatterFigure {
        panels: vec![ScatterPanel {
            name: "lvm".into(),
            truth: values.clone(),
            prediction: values,
            r2: None,
            r2_ci: None,
        }],
        title: "scatter".into(),
    };
    let path = dir.path().join("scatter.png");
    let err = panel(vec![-1e308, 1e308])
        .save(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lvm") && err.contains("overflows"), "{err}");
    panel(vec![1e20, 1e20]).save(&path).unwrap();
}
