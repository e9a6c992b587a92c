//! Downstream evaluation: metrics with bootstrap confidence intervals, linear probes,
//! fine-tuning, localisation maps, plots and reports.
