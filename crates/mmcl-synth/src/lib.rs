//! A generator of virtual subjects whose 12-lead ECG and short-axis cine CMR are driven by one
//! hidden cardiac state, written in UK Biobank layout.
