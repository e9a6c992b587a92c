//! Parity of one multimodal training step with the reference (`mmcl_step_small`): the CLIP loss,
//! every stored gradient, every stored parameter and BatchNorm running statistic after one
//! `torch.optim.Adam` step with L2 weight decay.

mod common;

use candle_core::{Device, Var};
use common::small_architecture;
use mmcl_nn::{LoadOptions, StateDict};
use mmcl_testutil::{
    Fixture, Tolerance, assert_close, assert_grad_close, device_name, devices, flat,
};
use mmcl_train::config::OnlineClassifier;
use mmcl_train::mmcl::contrastive_loss;
use mmcl_train::model::from_reference_name;
use mmcl_train::{MmclConfig, MmclModel, MmclStep};

/// The fixture's weights and its inputs and outputs; `None` when skipped.
fn fixtures() -> Option<(Fixture, Fixture)> {
    Some((
        Fixture::load("mmcl_step_small.weights")?,
        Fixture::load("mmcl_step_small.io")?,
    ))
}

/// Loads the fixture's weights into `model` (they hold no `num_batches_tracked`).
fn load_weights(model: &MmclModel, weights: &Fixture) {
    let state: StateDict = weights
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    model
        .load_state_dict(
            &state,
            &LoadOptions::strict().allow_missing(["*num_batches_tracked"]),
        )
        .expect("the fixture's weights fit the model");
}

/// The model variable the reference calls `reference`.
fn variable(model: &MmclModel, reference: &str) -> Var {
    let name = from_reference_name(reference).expect("a model key");
    model
        .store()
        .get(&name)
        .unwrap_or_else(|| panic!("{name} is not a model variable"))
}

#[test]
fn one_training_step_matches_the_reference() {
    let Some((weights, io)) = fixtures() else {
        return;
    };
    for device in devices() {
        eprintln!("parity of one training step on {}", device_name(&device));
        one_training_step_matches_the_reference_on(&weights, &io, &device);
    }
}

fn one_training_step_matches_the_reference_on(weights: &Fixture, io: &Fixture, device: &Device) {
    let optimizer = io.meta("optimizer");
    let lr = optimizer["lr"].as_f64().expect("lr");
    let loss_meta = io.meta("loss");
    let mut cfg = MmclConfig {
        weight_decay: optimizer["weight_decay"].as_f64().expect("weight decay"),
        betas: (
            optimizer["betas"][0].as_f64().expect("beta1"),
            optimizer["betas"][1].as_f64().expect("beta2"),
        ),
        eps: optimizer["eps"].as_f64().expect("eps"),
        temperature: loss_meta["temperature"].as_f64().expect("temperature"),
        lambda_0: loss_meta["lambda_0"].as_f64().expect("lambda"),
        ..MmclConfig::default()
    };
    cfg.classifier.online_classifier = OnlineClassifier::None;

    let model = MmclModel::new(&small_architecture(), 0, device).expect("model");
    load_weights(&model, weights);
    let mut step = MmclStep::new(model.clone(), &cfg).expect("step");

    let out = contrastive_loss(
        &model,
        step.clip(),
        &io.tensor("input_imaging")
            .to_device(device)
            .expect("images"),
        &io.tensor("input_ecg").to_device(device).expect("ECGs"),
        true,
        false,
    )
    .expect("forward");
    assert_close(
        "loss",
        &out.loss.reshape(1).expect("reshape"),
        &io.tensor("loss"),
        Tolerance::LOSS,
    );
    let grads = out.loss.backward().expect("backward");

    let mut checked = 0;
    let mut worst_grad = 0f64;
    for (key, expected) in &io.tensors {
        let Some(reference) = key.strip_prefix("grad.") else {
            continue;
        };
        let var = variable(&model, reference);
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{reference} received no gradient"));
        worst_grad = worst_grad.max(assert_grad_close(key, grad, expected, 1e-3));
        checked += 1;
    }
    assert_eq!(checked, 40, "every stored gradient is compared");
    eprintln!("parity: {checked} gradients, worst relative error {worst_grad:.3e}");

    step.apply_gradients(grads, lr).expect("Adam step");

    // Parameters after the step: at most 0.1 % of the elements may miss 1e-6 + 1e-4·|ref|
    // (elements whose gradient is float32 noise around zero can flip the sign of the update).
    let (mut total, mut outside, mut max_abs) = (0usize, 0usize, 0f64);
    let mut checked_params = 0;
    let mut worst_running = 0f64;
    for (key, expected) in &io.tensors {
        let Some(reference) = key.strip_prefix("after_step.") else {
            continue;
        };
        let actual = variable(&model, reference).as_tensor().clone();
        if reference.ends_with("running_mean") || reference.ends_with("running_var") {
            let w = assert_close(key, &actual, expected, Tolerance::FORWARD);
            worst_running = worst_running.max(w.max_abs_diff);
            continue;
        }
        let a = flat(&actual);
        let e = flat(expected);
        let mut tensor_outside = 0;
        for (x, y) in a.iter().zip(&e) {
            let diff = (*x as f64 - *y as f64).abs();
            max_abs = max_abs.max(diff);
            if diff > 1e-6 + 1e-4 * (*y as f64).abs() {
                tensor_outside += 1;
            }
        }
        total += a.len();
        outside += tensor_outside;
        checked_params += 1;
        if tensor_outside > 0 {
            eprintln!(
                "after_step {reference}: {tensor_outside} of {} elements outside",
                a.len()
            );
        }
    }
    let fraction = outside as f64 / total as f64;
    eprintln!(
        "parity after_step: {checked_params} parameters, {total} elements, {outside} outside \
         ({:.4} %), max |diff| {max_abs:.3e}; running statistics max |diff| {worst_running:.3e}",
        100.0 * fraction
    );
    assert!(checked_params >= 40, "{checked_params} parameters compared");
    assert!(
        fraction <= 1e-3,
        "{:.4} % of elements outside",
        100.0 * fraction
    );
}

/// The same forward in float64 lands on the reference's float64 loss: what separates the float32
/// run from it is rounding, not a difference in the computation.
#[test]
fn loss_in_float64_matches_exactly() {
    let Some((weights, io)) = fixtures() else {
        return;
    };
    let model = MmclModel::with_dtype(
        &small_architecture(),
        0,
        &Device::Cpu,
        candle_core::DType::F64,
    )
    .expect("model");
    load_weights(&model, &weights);
    let clip = mmcl_losses::clip::ClipLoss::new(0.1, 0.5).expect("clip");
    let f64_input = |n: &str| io.tensor(n).to_dtype(candle_core::DType::F64).expect("f64");
    let out = contrastive_loss(
        &model,
        &clip,
        &f64_input("input_imaging"),
        &f64_input("input_ecg"),
        true,
        false,
    )
    .expect("forward");
    let loss = out
        .loss
        .to_dtype(candle_core::DType::F64)
        .and_then(|l| l.to_vec0::<f64>())
        .expect("loss value");
    let reference = flat(&io.tensor("loss"))[0] as f64;
    eprintln!("parity f64 loss {loss:.9} vs reference {reference:.9}");
    // The fixture's loss is stored as float32: equal up to its rounding.
    assert!(
        (loss - reference).abs() <= 1e-7 * reference.abs(),
        "{loss} vs {reference}"
    );
}
