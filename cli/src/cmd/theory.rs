//! `ntk theory`: mean-field phase quantities of an initialization (DESIGN §5): the variance
//! fixed point q*, correlation fixed point c*, chi_1, chi_c, depth scales and the phase; and the
//! edge-of-chaos sigma_w2 for given sigma_b2 values.

use std::path::PathBuf;

use clap::Args;
use ntk_core::phase::{eoc_sigma_w2, mean_field, Phase};
use ntk_core::Activation;
use serde_json::{json, Value};

use crate::args::{parse_activation, parse_variance};
use crate::error::{CliError, CliResult};

/// Flags of `ntk theory`.
#[derive(Args, Debug)]
pub struct TheoryArgs {
    /// Activation.
    #[arg(long, default_value = "relu", value_parser = parse_activation)]
    pub activation: Activation,
    /// Weight variance sigma_w^2.
    #[arg(long = "sigma-w2", default_value_t = 2.0, value_parser = parse_variance, allow_negative_numbers = true)]
    pub sigma_w2: f64,
    /// Bias variance sigma_b^2.
    #[arg(long = "sigma-b2", default_value_t = 0.0, value_parser = parse_variance, allow_negative_numbers = true)]
    pub sigma_b2: f64,
    /// Also print the edge-of-chaos sigma_w2 at these sigma_b2 values (comma separated).
    #[arg(long, value_delimiter = ',', value_parser = parse_variance)]
    pub eoc_at: Vec<f64>,
    /// Write the result as JSON to this file (`-` for stdout) instead of text.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Ordered => "ordered",
        Phase::EdgeOfChaos => "edge-of-chaos",
        Phase::Chaotic => "chaotic",
    }
}

/// JSON numbers cannot be infinite: infinities become strings.
fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        json!(v.to_string())
    }
}

/// Runs `ntk theory`.
///
/// # Errors
/// Usage errors for bad variances; runtime errors when a fixed point cannot be found.
pub fn run(a: TheoryArgs) -> CliResult {
    let mf = mean_field(a.activation, a.sigma_w2, a.sigma_b2).map_err(|e| {
        CliError::Runtime(format!(
            "{} at sigma_w2 = {}, sigma_b2 = {}: {e}",
            a.activation, a.sigma_w2, a.sigma_b2
        ))
    })?;
    let mut eoc = Vec::new();
    for &sb in &a.eoc_at {
        let sw = eoc_sigma_w2(a.activation, sb)
            .map_err(|e| CliError::flag("--eoc-at", sb, format!("no edge of chaos: {e}")))?;
        eoc.push(json!({ "sigma_b2": sb, "sigma_w2": sw }));
    }
    let v = json!({
        "activation": a.activation.to_string(),
        "sigma_w2": a.sigma_w2,
        "sigma_b2": a.sigma_b2,
        "q_star": mf.q_star.map_or(json!("infinite"), num),
        "c_star": num(mf.c_star),
        "chi_1": num(mf.chi_1),
        "chi_c": num(mf.chi_c),
        "xi_grad": num(mf.xi_grad),
        "xi_c": num(mf.xi_c),
        "phase": phase_name(mf.phase),
        "eoc": eoc,
    });
    if let Some(path) = &a.json {
        crate::io::write_json_atomic(path, &v)?;
        return Ok(());
    }
    println!("activation  {}", a.activation);
    println!("sigma_w2    {}", a.sigma_w2);
    println!("sigma_b2    {}", a.sigma_b2);
    match mf.q_star {
        Some(q) => println!("q*          {q:.10}"),
        None => println!("q*          none (the variance map diverges)"),
    }
    println!("c*          {:.10}", mf.c_star);
    println!("chi_1       {:.10}", mf.chi_1);
    println!("chi_c       {:.10}", mf.chi_c);
    println!("xi_grad     {:.6}", mf.xi_grad);
    println!("xi_c        {:.6}", mf.xi_c);
    println!("phase       {}", phase_name(mf.phase));
    for e in &eoc {
        println!("EOC         sigma_b2 = {} -> sigma_w2 = {}", e["sigma_b2"], e["sigma_w2"]);
    }
    Ok(())
}
