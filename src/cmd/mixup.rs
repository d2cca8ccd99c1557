//! `admix mixup`: the AdpMixup pipeline (the library's [`admix::mixup`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use admix::attack::run::AttackKind;
use admix::mixup::{self, AdaptiveMethods, DataFiles, MixupConfig, Preset};

use super::{choice, Runtime, Seed};

#[derive(Args)]
pub struct MixupArgs {
    /// Output directory: every stage's results, report.md, report.json and tradeoff.png
    #[arg(long, default_value = "runs/mixup")]
    out: PathBuf,
    /// Your own data instead of MR: a labelled .tsv/.csv/.jsonl training file, or a GLUE task's
    /// train.tsv as it is (with --test)
    #[arg(long, requires = "test")]
    train: Option<PathBuf>,
    /// Dev file (same format), with --train. Without it a seeded, label-stratified dev split of
    /// --dev-examples (default: the preset's; under full, a tenth of train) is carved from train
    /// and not trained on (for GLUE, whose dev.tsv is the test set)
    #[arg(long, requires = "train")]
    dev: Option<PathBuf>,
    /// Test file (same format), with --train; for GLUE, the task's dev.tsv
    #[arg(long, requires = "train")]
    test: Option<PathBuf>,
    /// Sizes: `quick` (the CPU-sized main job, about 17 minutes on 2 cores) or `full` (all the data)
    #[arg(long, default_value = "full", value_parser = choice::<Preset>())]
    preset: Preset,
    /// Training examples: a seeded sample of the training split (default: the preset's)
    #[arg(long)]
    train_examples: Option<usize>,
    /// Training examples attacked to make each adversarial training set (default: the preset's)
    #[arg(long)]
    adv_examples: Option<usize>,
    /// Dev examples (model selection after every epoch; default: the preset's)
    #[arg(long)]
    dev_examples: Option<usize>,
    /// Test examples (clean accuracy and the transfer sets; default: the preset's)
    #[arg(long)]
    test_examples: Option<usize>,
    /// Known attacks: one adversarial adapter each (default: the preset's)
    #[arg(long, value_parser = choice::<AttackKind>(), value_delimiter = ',')]
    known: Option<Vec<AttackKind>>,
    /// Unseen attacks: evaluated, never trained on (default: the preset's)
    #[arg(long, value_parser = choice::<AttackKind>(), value_delimiter = ',')]
    unseen: Option<Vec<AttackKind>>,
    /// Train each adversarial adapter on its adversarial examples alone (default: clean +
    /// adversarial, with the original labels)
    #[arg(long)]
    adv_only: bool,
    /// Adapter training epochs (default: the preset's)
    #[arg(long)]
    epochs: Option<usize>,
    /// Adapter learning rate (default: `admix train`'s)
    #[arg(long)]
    lr: Option<f32>,
    /// Training batch size (default: `admix train`'s)
    #[arg(long)]
    batch_size: Option<usize>,
    /// Token limit of every stage: training, the attacks, evaluation (pairs truncated longest
    /// first; default 64, MR's sentences fit; sentence pairs want 128)
    #[arg(long, value_parser = clap::value_parser!(u64).range(3..=8192))]
    max_len: Option<u64>,
    /// Training dropout (default: the model config's)
    #[arg(long)]
    dropout: Option<f32>,
    /// Full fine-tuning epochs (default: the preset's)
    #[arg(long)]
    full_epochs: Option<usize>,
    /// Skip the full fine-tuning baselines (full fine-tuning, full adversarial training, Model Soup)
    #[arg(long)]
    no_full: bool,
    /// AdpMixup's entropy temperature: β = softmax(−H/τ)
    #[arg(long, default_value_t = 0.1)]
    tau: f32,
    /// The τ ablation
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.02,0.05,0.1,0.2,0.5,1,10")]
    taus: Vec<f32>,
    /// Step of the static β grid (the clean adapter's weight, 0 to 1)
    #[arg(long, default_value_t = 0.1)]
    beta_step: f32,
    /// Adaptive protocol: test examples attacked per method and attack (0 = skip; default: the
    /// preset's)
    #[arg(long)]
    adaptive_examples: Option<usize>,
    /// Adaptive protocol: `all` methods of the table, or the `core` ones (clean adapter,
    /// adversarial adapters, adv-all, full adversarial training, every AdpMixup rule not chosen on
    /// test)
    #[arg(long, default_value = "all", value_parser = choice::<AdaptiveMethods>())]
    adaptive_methods: AdaptiveMethods,
    /// Most model queries per attacked example
    #[arg(long, default_value_t = 2000)]
    query_budget: u64,
    /// Training seeds: --seed and the N − 1 after it. Every trained method is trained once per
    /// seed and evaluated on the same transfer sets (those of --seed's clean adapter, a fixed
    /// surrogate); the report gives mean ± sd. Adaptive attacks: --seed's models only
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
    /// Print the run's stage graph and exit: per stage its wave (stages of one wave can run at
    /// once), name, needs and the command that runs it alone (TSV)
    #[arg(long, conflicts_with = "stage")]
    plan: bool,
    /// Run one stage of the run in --out (its needs finished, by this or another machine sharing
    /// the directory) and exit; `adaptive` runs every adaptive stage. Without it: every stage, then
    /// the report
    #[arg(long, value_name = "NAME")]
    stage: Option<String>,
    #[command(flatten)]
    seed: Seed,
    #[command(flatten)]
    rt: Runtime,
}

/// `arg` as a POSIX shell word.
fn shell_word(arg: &str) -> String {
    let plain = !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c));
    match plain {
        true => arg.to_string(),
        false => format!("'{}'", arg.replace('\'', r"'\''")),
    }
}

pub fn mixup(a: MixupArgs) -> Result<()> {
    a.rt.init()?;
    let files = match (a.train, a.test) {
        (Some(train), Some(test)) => Some(DataFiles { train, dev: a.dev, test }),
        _ => None,
    };
    let config = MixupConfig {
        out: a.out,
        model: a.rt.model,
        files,
        preset: a.preset,
        train_examples: a.train_examples,
        adv_examples: a.adv_examples,
        dev_examples: a.dev_examples,
        test_examples: a.test_examples,
        known: a.known,
        unseen: a.unseen,
        adv_only: a.adv_only,
        epochs: a.epochs,
        lr: a.lr,
        batch_size: a.batch_size,
        dropout: a.dropout,
        max_len: a.max_len.map(|n| n as usize),
        full_epochs: a.full_epochs,
        no_full: a.no_full,
        tau: a.tau,
        taus: a.taus,
        beta_step: a.beta_step,
        adaptive_examples: a.adaptive_examples,
        adaptive_methods: a.adaptive_methods,
        query_budget: a.query_budget,
        seed: a.seed.seed,
        seeds: a.seeds as usize,
        device: a.rt.device,
        precision: a.rt.precision,
    };
    if a.plan {
        // each stage's command: this command line without --plan, with --stage NAME
        let argv: Vec<String> = std::env::args().filter(|x| x != "--plan").map(|x| shell_word(&x)).collect();
        println!("# wave\tstage\tneeds\tcommand");
        for node in mixup::stages(&config)? {
            let needs = if node.needs.is_empty() { "-".to_string() } else { node.needs.join(",") };
            println!("{}\t{}\t{needs}\t{} --stage {}", node.wave, node.name, argv.join(" "), node.name);
        }
        return Ok(());
    }
    if let Some(stage) = &a.stage {
        mixup::run_stage(&config, stage)?;
        println!("stage {stage}: finished in {}", config.out.display());
        return Ok(());
    }
    let report = mixup::run(&config)?;
    let out = &config.out;
    println!("{}", mixup::report::markdown(&report));
    println!("plot: {}", out.join("tradeoff.png").display());
    println!("report: {} (JSON: {})", out.join("report.md").display(), out.join("report.json").display());
    Ok(())
}
