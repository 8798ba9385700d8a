//! Your own training loop on Fabric: digits-mlp trained by hand, with Fabric doing the
//! device, seeding, backward, clipping, collectives and checkpointing.
//!
//! cargo run --release -p volt-zoo --example fabric_loop
//! cargo run --release -p volt-zoo --example fabric_loop -- --devices 2   # ddp, 2 processes
use tch::Tensor;
use volt_train::checkpoint::{model_tensors, Checkpoint, TrainingState};
use volt_train::{ClipAlgorithm, DataModule, Fabric, FabricConfig, OptimizerSpec, ReduceOp};
use volt_zoo::{DigitsData, DigitsDataConfig, DigitsMlp, DigitsMlpConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let devices = match args.iter().position(|a| a == "--devices") {
        Some(i) => args.get(i + 1).ok_or("--devices needs a number")?.parse()?,
        None => 1,
    };
    // With devices > 1 this launches the other ranks (copies of this program) and
    // joins them; each rank then runs the code below on its shard of the data.
    let mut fabric = Fabric::new(&FabricConfig { devices, ..FabricConfig::default() })?;
    Fabric::seed_everything(0);
    let model = DigitsMlp::new(DigitsMlpConfig::default(), fabric.device());
    let mut optimizer =
        fabric.setup(volt_train::VoltModule::var_store(&model), OptimizerSpec::adamw(1e-3))?;
    let data = DigitsData::new(DigitsDataConfig::default())?;
    let train = fabric.setup_dataloader(data.train_dataloader().ok_or("no train loader")?);
    let val = fabric.setup_dataloader(data.val_dataloader().ok_or("no val loader")?);

    for epoch in 0..10 {
        for batch in train.epoch(epoch, 0) {
            let (x, y) = batch?;
            let (x, y) = (x.to_device(fabric.device()), y.to_device(fabric.device()));
            let loss = model.forward(&x).cross_entropy_for_logits(&y);
            fabric.backward(&loss)?;
            fabric.clip_gradients(&optimizer, 1.0, ClipAlgorithm::Norm)?;
            optimizer.step()?;
            optimizer.zero_grad();
        }
        let (mut correct, mut seen) = (0.0, 0.0);
        tch::no_grad(|| -> Result<(), volt_train::Error> {
            for batch in val.epoch(0, 0) {
                let (x, y) = batch?;
                let (x, y) = (x.to_device(fabric.device()), y.to_device(fabric.device()));
                let n = y.size()[0] as f64;
                correct += model.forward(&x).accuracy_for_logits(&y).double_value(&[]) * n;
                seen += n;
            }
            Ok(())
        })?;
        // Every rank saw its shard of the validation set: add the counts up.
        let total = fabric.all_reduce(&Tensor::from_slice(&[correct, seen]), ReduceOp::Sum)?;
        if fabric.is_global_zero() {
            let acc = total.double_value(&[0]) / total.double_value(&[1]);
            println!("epoch {epoch}: val_acc {acc:.4} ({} ranks)", fabric.world_size());
        }
    }

    let path = std::env::temp_dir().join("volt-fabric-loop.safetensors");
    let ckpt = Checkpoint {
        tensors: model_tensors(volt_train::VoltModule::var_store(&model)),
        state: TrainingState { hparams: serde_json::to_value(model.config())?, ..TrainingState::default() },
    };
    fabric.save(&path, &ckpt)?;
    fabric.barrier()?;
    let restored = DigitsMlp::new(DigitsMlpConfig::default(), fabric.device());
    fabric.load(&path, volt_train::VoltModule::var_store(&restored))?;
    let probe = Tensor::ones([1, 64], (tch::Kind::Float, fabric.device()));
    let same = model.forward(&probe).equal(&restored.forward(&probe));
    if fabric.is_global_zero() {
        println!("saved {} and loaded it back: identical outputs = {same}", path.display());
    }
    Ok(())
}
