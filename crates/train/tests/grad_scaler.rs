//! `16-mixed`'s gradient scaler, on the CPU (its float16 autocast is CUDA's, so the
//! arithmetic is checked here and the CUDA run is the lent GPU's): scaled backward then
//! unscale gives the plain gradients, an overflowed step is skipped and halves the scale,
//! clean steps grow it, and checkpoints carry it.
use tch::{nn, nn::Module, Kind, Tensor};
use volt_train::grad_scaler::{lock, GradScaler};
use volt_train::optim::{Optimizer, OptimizerSpec};

fn model(seed: i64) -> (nn::VarStore, nn::Linear) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let lin = nn::linear(vs.root() / "fc", 4, 3, Default::default());
    (vs, lin)
}

fn loss(lin: &nn::Linear) -> Tensor {
    let x = Tensor::arange(8, (Kind::Float, tch::Device::Cpu)).view([2, 4]) / 8.0;
    lin.forward(&x).pow_tensor_scalar(2).mean(Kind::Float)
}

fn values(vs: &nn::VarStore) -> Vec<Vec<f32>> {
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.iter().map(|(_, t)| Vec::<f32>::try_from(t.flatten(0, -1)).expect("values")).collect()
}

#[test]
fn a_scaled_step_is_the_plain_step_and_an_overflowed_one_is_skipped() {
    let spec = OptimizerSpec::adamw_with(1e-2, (0.9, 0.95), 0.0);
    let (mut plain_vs, plain) = model(1);
    let (scaled_vs, scaled) = model(1);
    // The other test draws from the global generator at the same time: copy, not reseed.
    plain_vs.copy(&scaled_vs).expect("copy");
    let mut plain_opt = Optimizer::new(spec.clone(), &plain_vs);
    let mut opt = Optimizer::new(spec, &scaled_vs);
    let scaler = GradScaler::default().shared();
    opt.set_grad_scaler(scaler.clone());

    // An overflow: the step is skipped, nothing moves, the scale halves.
    let before = values(&scaled_vs);
    (lock(&scaler).scale_loss(&loss(&scaled)) * f64::INFINITY).backward();
    opt.step().expect("step");
    opt.zero_grad();
    assert_eq!(values(&scaled_vs), before, "an overflowed step moves nothing");
    assert_eq!(opt.steps(), 0);
    assert_eq!(lock(&scaler).state().scale, 32768.0);

    // Clean: unscaled gradients are the plain ones (a power of two divides exactly), so
    // the step is the unscaled optimizer's, bit for bit.
    lock(&scaler).scale_loss(&loss(&scaled)).backward();
    loss(&plain).backward();
    assert!(!opt.unscale_grads(), "finite");
    assert!(!opt.unscale_grads(), "a second unscale in the step divides nothing");
    let grads = |o: &Optimizer| -> Vec<Vec<f32>> {
        o.grads().iter().map(|g| Vec::<f32>::try_from(g.flatten(0, -1)).expect("grad")).collect()
    };
    assert_eq!(grads(&opt), grads(&plain_opt));
    opt.step().expect("step");
    plain_opt.step().expect("step");
    assert_eq!(values(&scaled_vs), values(&plain_vs));
    assert_ne!(values(&scaled_vs), before);
    assert_eq!(opt.steps(), 1);
    let state = lock(&scaler).state();
    assert_eq!((state.scale, state.growth_tracker), (32768.0, 1));
}

#[test]
fn the_scale_grows_after_clean_steps_and_checkpoints_carry_it() {
    let (vs, lin) = model(2);
    let mut opt = Optimizer::new(OptimizerSpec::adamw_with(1e-3, (0.9, 0.999), 0.0), &vs);
    let scaler = GradScaler::new(8.0, 2).shared();
    opt.set_grad_scaler(scaler.clone());
    let mut scales = Vec::new();
    for step in 0..5 {
        let l = lock(&scaler).scale_loss(&loss(&lin));
        // Step 2 overflows (a NaN): the count restarts.
        if step == 2 { l * f64::NAN } else { l }.backward();
        opt.step().expect("step");
        opt.zero_grad();
        scales.push(lock(&scaler).state().scale);
    }
    assert_eq!(scales, [8.0, 16.0, 8.0, 8.0, 16.0]);
    assert_eq!(opt.steps(), 4);

    let scalars = opt.scalars();
    let saved = scalars.grad_scaler.clone().expect("the scaler's state");
    assert_eq!((saved.scale, saved.growth_tracker), (16.0, 0));
    let json = serde_json::to_string(&scalars).expect("json");
    let (vs2, _) = model(2);
    let mut resumed = Optimizer::new(OptimizerSpec::adamw_with(1e-3, (0.9, 0.999), 0.0), &vs2);
    let fresh = GradScaler::new(8.0, 2).shared();
    resumed.set_grad_scaler(fresh.clone());
    let back: volt_formats::checkpoint::OptimizerScalars = serde_json::from_str(&json).expect("back");
    let tensors = opt.state_tensors().into_iter().collect();
    resumed.load_state(&back, &tensors).expect("load");
    assert_eq!(lock(&fresh).state(), saved);

    // A checkpoint without a scaler (every run but 16-mixed) still reads, and says none.
    let plain = Optimizer::new(OptimizerSpec::adamw_with(1e-3, (0.9, 0.999), 0.0), &vs2);
    let json = serde_json::to_string(&plain.scalars()).expect("json");
    assert!(!json.contains("grad_scaler"), "{json}");
    let back: volt_formats::checkpoint::OptimizerScalars = serde_json::from_str(&json).expect("back");
    assert_eq!(back.grad_scaler, None);
}
