//! LoRA layers: a fresh adapter changes nothing; training moves only the adapter (the
//! base gets no gradient, no optimizer state, and stays bit for bit); the merged weight
//! computes what the adapter does; the scale is alpha / r; bad settings and unknown
//! targets are named.
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};
use volt_train::lora::{LoraConfig, LoraLinear};
use volt_train::{Optimizer, OptimizerSpec};

fn layer(vs: &nn::VarStore, name: &str, cfg: Option<&LoraConfig>) -> LoraLinear {
    let w = Tensor::randn([6, 4], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([6], (Kind::Float, Device::Cpu));
    LoraLinear::new(&(vs.root() / name), w, Some(b), cfg).expect("layer")
}

/// Overwrites variable `name` of `vs` with `value`.
fn set(vs: &nn::VarStore, name: &str, value: f64) {
    let mut vars = vs.variables();
    let var = vars.get_mut(name).unwrap_or_else(|| panic!("no {name}"));
    tch::no_grad(|| {
        let _ = var.fill_(value);
    });
}

fn no_dropout() -> LoraConfig {
    LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec!["q_proj".into()] }
}

#[test]
fn a_fresh_adapter_changes_nothing_and_a_is_kaiming_uniform() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let l = layer(&vs, "q_proj", Some(&no_dropout()));
    let x = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
    let plain = x.linear(&l.merged_weight(), l.bias());
    assert!(l.forward_t(&x, false).equal(&plain), "B starts at zero");
    let vars = vs.variables();
    let a = &vars["q_proj.lora_A.weight"];
    assert_eq!((a.size(), vars["q_proj.lora_B.weight"].size()), (vec![2, 4], vec![6, 2]));
    let bound = 1.0 / 2.0; // 1/sqrt(in = 4)
    assert!(a.abs().max().double_value(&[]) <= bound, "A within ±1/√in");
    assert!(a.abs().max().double_value(&[]) > 0.0, "A is not zero");
}

#[test]
fn training_moves_only_the_adapter_and_the_merged_weight_computes_the_same() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let l = layer(&vs, "q_proj", Some(&no_dropout()));
    let base_before = vs.variables()["q_proj.weight"].copy();
    let bias_before = vs.variables()["q_proj.bias"].copy();
    let mut opt = Optimizer::new(OptimizerSpec::adamw(1e-2), &vs);
    let names: Vec<&str> = opt.params().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["q_proj.lora_A.weight", "q_proj.lora_B.weight"], "only the adapter is optimized");
    let x = Tensor::randn([8, 4], (Kind::Float, Device::Cpu));
    let target = Tensor::randn([8, 6], (Kind::Float, Device::Cpu));
    let first = l.forward_t(&x, true).mse_loss(&target, tch::Reduction::Mean).double_value(&[]);
    for _ in 0..20 {
        opt.zero_grad();
        let loss = l.forward_t(&x, true).mse_loss(&target, tch::Reduction::Mean);
        loss.backward();
        assert!(!vs.variables()["q_proj.weight"].grad().defined(), "the base gets no gradient");
        opt.step().expect("step");
    }
    let last = l.forward_t(&x, true).mse_loss(&target, tch::Reduction::Mean).double_value(&[]);
    assert!(last < first, "the adapter learns: {first} -> {last}");
    assert!(vs.variables()["q_proj.weight"].equal(&base_before), "base weight bit for bit");
    assert!(vs.variables()["q_proj.bias"].equal(&bias_before), "base bias bit for bit");
    assert!(vs.variables()["q_proj.lora_B.weight"].abs().sum(Kind::Float).double_value(&[]) > 0.0);
    let merged = x.linear(&l.merged_weight(), l.bias());
    let adapted = l.forward_t(&x, false);
    let diff = (merged - adapted).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "merged weight computes what the adapter does: {diff}");
}

#[test]
fn the_update_is_scaled_by_alpha_over_r() {
    tch::manual_seed(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = LoraConfig { r: 2, alpha: 6.0, dropout: 0.0, targets: vec!["q_proj".into()] };
    let l = layer(&vs, "q_proj", Some(&cfg));
    set(&vs, "q_proj.lora_A.weight", 1.0);
    set(&vs, "q_proj.lora_B.weight", 1.0);
    let vars = vs.variables();
    let x = Tensor::ones([1, 4], (Kind::Float, Device::Cpu));
    let base = x.linear(&vars["q_proj.weight"], Some(&vars["q_proj.bias"]));
    // x Aᵀ = [4, 4]; · Bᵀ = 8 per output; · alpha / r = 3 → 24.
    let update = l.forward_t(&x, false) - base;
    assert!(update.allclose(&Tensor::full([1, 6], 24.0, (Kind::Float, Device::Cpu)), 1e-6, 1e-6, false));
    // Dropout acts on the adapter's input only while training.
    let cfg = LoraConfig { dropout: 0.5, ..cfg };
    let l = layer(&vs, "k_proj", Some(&cfg));
    set(&vs, "k_proj.lora_B.weight", 1.0);
    let vars = vs.variables();
    let x = Tensor::randn([4, 4], (Kind::Float, Device::Cpu));
    assert!(l.forward_t(&x, false).equal(&l.forward_t(&x, false)), "no dropout when evaluating");
    assert!(!l.forward_t(&x, true).equal(&l.forward_t(&x, true)), "dropout while training");
    let base = x.linear(&vars["k_proj.weight"], Some(&vars["k_proj.bias"]));
    let without = x.linear(&l.merged_weight(), l.bias());
    assert!(!without.equal(&base), "the adapter contributes");
}

#[test]
fn bad_settings_and_unknown_targets_are_named() {
    let layers =
        ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.up_proj"];
    let cfg = LoraConfig { targets: vec!["q_proj".into(), "v_proj".into()], ..LoraConfig::default() };
    assert_eq!(cfg.select(&layers).expect("select"), &layers[..2]);
    let all = LoraConfig { targets: vec!["all-linear".into()], ..LoraConfig::default() };
    assert_eq!(all.select(&layers).expect("all").len(), 3);
    let typo = LoraConfig { targets: vec!["q_prj".into()], ..LoraConfig::default() };
    let e = typo.select(&layers).expect_err("unknown").to_string();
    assert!(e.contains("\"q_prj\"") && e.contains("q_proj, up_proj, v_proj"), "{e}");
    for (cfg, field) in [
        (LoraConfig { r: 0, ..LoraConfig::default() }, "lora.r"),
        (LoraConfig { alpha: -1.0, ..LoraConfig::default() }, "lora.alpha"),
        (LoraConfig { alpha: f64::NAN, ..LoraConfig::default() }, "lora.alpha"),
        (LoraConfig { dropout: 1.0, ..LoraConfig::default() }, "lora.dropout"),
        (LoraConfig { targets: vec![], ..LoraConfig::default() }, "lora.targets"),
    ] {
        let e = cfg.check().expect_err("refused").to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let flat = Tensor::zeros([4], (Kind::Float, Device::Cpu));
    let e = LoraLinear::new(&vs.root(), flat, None, None).expect_err("1-d weight").to_string();
    assert!(e.contains("out × in"), "{e}");
}
