//! A minimal dense row-major matrix, the exchange type of metrics and probes.

use crate::{Error, Result};

/// A dense row-major matrix of `rows × cols` elements.
///
/// Targets and predictions are `Matrix<f64>` (one column per target, NaN where a value is
/// missing); embeddings are `Matrix<f32>` (one row per subject).
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix<T> {
    rows: usize,
    cols: usize,
    data: Vec<T>,
}

impl<T: Copy> Matrix<T> {
    /// A matrix from row-major `data`; errors when `data.len() != rows * cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<T>) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::InvalidInput(format!(
                "{} values cannot form a {rows}×{cols} matrix",
                data.len()
            )));
        }
        Ok(Self { rows, cols, data })
    }

    /// A single-column matrix.
    pub fn column_vector(values: Vec<T>) -> Self {
        Self {
            rows: values.len(),
            cols: 1,
            data: values,
        }
    }

    /// A matrix filled with `value`.
    pub fn filled(rows: usize, cols: usize, value: T) -> Self {
        Self {
            rows,
            cols,
            data: vec![value; rows * cols],
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The row-major elements.
    pub fn as_slice(&self) -> &[T] {
        &self.data
    }

    /// The row-major elements, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// Row `i`.
    ///
    /// # Panics
    /// When `i >= rows`.
    pub fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Element `(i, j)`.
    ///
    /// # Panics
    /// When out of bounds.
    pub fn get(&self, i: usize, j: usize) -> T {
        self.data[i * self.cols + j]
    }

    /// Sets element `(i, j)`.
    ///
    /// # Panics
    /// When out of bounds.
    pub fn set(&mut self, i: usize, j: usize, value: T) {
        self.data[i * self.cols + j] = value;
    }

    /// Column `j` as a new vector.
    ///
    /// # Panics
    /// When `j >= cols`.
    pub fn column(&self, j: usize) -> Vec<T> {
        assert!(
            j < self.cols,
            "column {j} of a matrix with {} columns",
            self.cols
        );
        (0..self.rows)
            .map(|i| self.data[i * self.cols + j])
            .collect()
    }

    /// The rows listed in `indices`, in that order.
    ///
    /// # Panics
    /// When an index is out of bounds.
    pub fn select_rows(&self, indices: &[usize]) -> Self {
        let mut data = Vec::with_capacity(indices.len() * self.cols);
        for &i in indices {
            data.extend_from_slice(self.row(i));
        }
        Self {
            rows: indices.len(),
            cols: self.cols,
            data,
        }
    }

    /// Consumes the matrix and returns its row-major elements.
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }
}
