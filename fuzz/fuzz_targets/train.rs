//! Invariant: `train::train_step` (full-batch GD, mini-batch SGD, Adam; MSE and cross-entropy;
//! the network and its linearization) never panics on any network, data or optimizer
//! constants, and with exactly `train_step_scratch` elements of scratch returns no buffer
//! error. An `Ok` comes with a finite loss, finite parameters and finite optimizer state; an
//! error before the update (non-finite data, overflow in the forward or backward pass) leaves
//! parameters and state untouched; only the update's own error (`Pass::Train`) may leave them
//! changed. The same steps from the same start give the same bits.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::{fuzz_target, Corpus};
use ntk_core::backward::Loss;
use ntk_core::train::{train_step, train_step_scratch, Method, Model, Optimizer};
use ntk_core::{Error, Pass, Real, Spec};
use ntk_fuzz::{to_f32, Caps, Inputs, Net, Variance};

const CAPS: Caps = Caps { depth: 40, width: 32, params: 20_000, n: 10 };

#[derive(Arbitrary, Debug)]
struct Case {
    net: Net,
    x: Inputs,
    /// Scale of the MSE targets (cross-entropy takes one-hot rows).
    y_scale: Variance,
    cross_entropy: bool,
    linearized: bool,
    f32: bool,
    learning_rate: Variance,
    /// Adam's (beta1, beta2, eps), or SGD.
    adam: Option<(Variance, Variance, Variance)>,
    batch_size: u8,
    seed: u64,
    /// First step number (epochs and Adam's bias correction depend on it).
    first_step: u16,
    steps: u8,
}

/// Errors a step with exactly sized buffers may return (`n = 0` is a shape error).
fn allowed(e: &Error, n: usize) -> bool {
    matches!(e, Error::NonFinite { .. } | Error::NonFiniteInput { .. })
        || (n == 0 && matches!(e, Error::ShapeMismatch { what: "x", .. }))
}

/// One case's problem in precision `T`.
struct Problem<'a, T> {
    spec: &'a Spec<'a>,
    case: &'a Case,
    opt: Optimizer,
    p0: Vec<T>,
    x: Vec<T>,
    y: Vec<T>,
    n: usize,
}

/// Runs the case's steps from `p0` (zero state); returns the losses (or the first error) with
/// the final parameters and state.
fn run<T: Real>(pr: &Problem<'_, T>) -> (Vec<Result<f64, Error>>, Vec<T>, Vec<T>) {
    let Problem { spec, case, opt, p0, x, y, n } = pr;
    let n = *n;
    let loss = if case.cross_entropy { Loss::CrossEntropy } else { Loss::Mse };
    let b = opt.batch_len(n);
    let mut scratch = vec![T::ZERO; train_step_scratch(spec.widths, spec.bias, b)];
    let mut perm = vec![0usize; n];
    // The linearized model trains the displacement from p0, zero at the start.
    let mut p = if case.linearized { vec![T::ZERO; p0.len()] } else { p0.to_vec() };
    let mut state = vec![T::ZERO; opt.state_len(p.len())];
    let mut out = Vec::new();
    for s in 0..(case.steps % 4) as u64 + 1 {
        let model =
            if case.linearized { Model::Linearized { params0: p0 } } else { Model::Network };
        let (before, state_before) = (p.clone(), state.clone());
        let step = case.first_step as u64 + s;
        let r = train_step(
            spec,
            model,
            opt,
            loss,
            &mut p,
            &mut state,
            x,
            y,
            n,
            step,
            &mut perm,
            &mut scratch,
        );
        match &r {
            Ok(l) => {
                assert!(l.is_finite(), "Ok with loss {l}");
                assert!(
                    p.iter().chain(&state).all(|v| v.is_finite()),
                    "Ok with non-finite parameters"
                );
            }
            Err(e) => {
                assert!(allowed(e, n), "{e:?}");
                if !matches!(e, Error::NonFinite { pass: Pass::Train, .. }) {
                    let same = |a: &[T], b: &[T]| {
                        a.iter().zip(b).all(|(u, v)| u.to_f64().to_bits() == v.to_f64().to_bits())
                    };
                    assert!(
                        same(&p, &before) && same(&state, &state_before),
                        "{e:?} changed the parameters"
                    );
                }
            }
        }
        let stop = r.is_err();
        out.push(r);
        if stop {
            break;
        }
    }
    (out, p, state)
}

fn check<T: Real>(pr: Problem<'_, T>) {
    let (a, b) = (run(&pr), run(&pr));
    let bits = |v: &[T]| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
    let losses = |r: &[Result<f64, Error>]| {
        r.iter()
            .map(|r| r.as_ref().map(|l| l.to_bits()).map_err(|e| format!("{e:?}")))
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&a.0), losses(&b.0), "losses differ between runs");
    assert!(bits(&a.1) == bits(&b.1) && bits(&a.2) == bits(&b.2), "parameters differ between runs");
}

fuzz_target!(|case: Case| -> Corpus {
    let Some(widths) = case.net.widths(&CAPS) else { return Corpus::Reject };
    let Ok(spec) = case.net.spec(&widths) else { return Corpus::Keep };
    let Some(x) = case.x.build(spec.input_dim(), &CAPS) else { return Corpus::Reject };
    let (n, k) = (case.x.n as usize, spec.output_dim());
    // Bounded work per case: each step is a forward and a backward pass (twice the linearized).
    if n * spec.param_count() > 60_000 {
        return Corpus::Reject;
    }
    let y: Vec<f64> = if case.cross_entropy {
        (0..n * k).map(|j| f64::from(u8::from(j % k == (j / k + case.seed as usize) % k))).collect()
    } else {
        let s = case.y_scale.get();
        (0..n * k).map(|j| s * ntk_core::rng::normal(case.seed, 5, j as u64)).collect()
    };
    let method = match case.adam {
        None => Method::Sgd,
        Some((b1, b2, eps)) => Method::Adam { beta1: b1.get(), beta2: b2.get(), eps: eps.get() },
    };
    let opt = Optimizer {
        method,
        learning_rate: case.learning_rate.get(),
        batch_size: case.batch_size as usize % (CAPS.n + 2),
        seed: case.seed,
    };
    let p = case.net.params(&spec);
    let (spec, case) = (&spec, &case);
    if case.f32 {
        let (p0, x, y) = (to_f32(&p), to_f32(&x), to_f32(&y));
        check(Problem { spec, case, opt, p0, x, y, n });
    } else {
        check(Problem { spec, case, opt, p0: p, x, y, n });
    }
    Corpus::Keep
});
