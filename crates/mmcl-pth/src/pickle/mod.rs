//! A pickle virtual machine for the objects `torch.save` writes.
//!
//! It executes the opcodes of protocols 0–5 that occur in PyTorch files and builds plain values:
//! numbers, strings, tuples, lists, dicts, tensor descriptions (from `_rebuild_tensor_v2` and
//! friends over persistent storages), and opaque objects for every other class (optimizer
//! states, hyper-parameter containers, OmegaConf configs, …), which the caller ignores. It never
//! imports or runs anything: a global is only a name.
//!
//! Nothing runs here, but a file that Python's unpickler would turn into a code-execution call
//! must not pass for a checkpoint either (it would run when someone loads it with `torch.load`).
//! So globals follow the policy of PyTorch's `weights_only` unpickler, widened to the plain data
//! classes real checkpoints carry (see [`policy`] and the calls of [`machine`]):
//! - a global from a module that reaches the system or the interpreter (`os`, `subprocess`,
//!   `builtins.eval`, `functools`, …) is refused wherever it appears;
//! - a global that is *called* (REDUCE, and the INST/OBJ opcodes, which call too) must be one of
//!   the tensor-rebuilding or plain-container callables of [`policy::CALLABLES`];
//! - any other class may be *instantiated* through NEWOBJ (Python then only runs `__new__`): that
//!   is how `argparse.Namespace` arguments and Lightning/OmegaConf hyper-parameters are saved,
//!   and they become opaque objects;
//! - BUILD on a global (setting attributes of a class or module) is refused.
//!
//! The opcodes are in [`machine`], the allow-list in [`policy`]. The work a pickle can ask for is
//! bounded by [`MAX_PICKLE_VALUES`]: memo references let a small file copy one big list or tuple
//! any number of times.

mod machine;
mod policy;

use std::cell::RefCell;
use std::rc::Rc;

use machine::Machine;

/// Why a pickle could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PickleError {
    /// The stream ended inside an opcode or before STOP.
    #[error("the pickled data is truncated")]
    Truncated,
    /// An opcode byte we do not know (or that protocol 5 out-of-band buffers need), and where.
    #[error("unsupported pickle opcode 0x{0:02x} at byte {1}")]
    UnknownOpcode(u8, usize),
    /// The stream is malformed (stack underflow, missing mark, bad memo reference, …).
    #[error("malformed pickle: {0}")]
    Malformed(String),
    /// The pickle uses a global that a checkpoint of weights has no use for (`action` says how:
    /// refers to, calls, sets attributes of).
    #[error(
        "refusing the file: its pickle {action} {global}, which is not among the \
         tensor-rebuilding and plain-data globals a checkpoint needs (torch.load would run it)"
    )]
    Forbidden {
        /// `module.qualname` as written in the file.
        global: String,
        /// How the pickle uses it.
        action: &'static str,
    },
    /// The pickle builds or copies more values than allowed (2²⁴, `MAX_PICKLE_VALUES`).
    #[error(
        "the pickle builds more than {MAX_PICKLE_VALUES} values (memo references copying one \
         object over and over?)"
    )]
    TooManyValues,
}

type PResult<T> = Result<T, PickleError>;

fn malformed<T>(why: impl Into<String>) -> PResult<T> {
    Err(PickleError::Malformed(why.into()))
}

/// The element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StorageDType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDType {
    /// From a storage class name (`FloatStorage`) or a dtype name (`float32`).
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" | "float64" | "double" => Self::F64,
            "FloatStorage" | "float32" | "float" => Self::F32,
            "HalfStorage" | "float16" | "half" => Self::F16,
            "BFloat16Storage" | "bfloat16" => Self::BF16,
            "LongStorage" | "int64" | "long" => Self::I64,
            "IntStorage" | "int32" | "int" => Self::I32,
            "ShortStorage" | "int16" | "short" => Self::I16,
            "CharStorage" | "int8" => Self::I8,
            "ByteStorage" | "uint8" => Self::U8,
            "BoolStorage" | "bool" => Self::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

/// A storage named by a persistent id: the archive entry `data/<key>`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    /// The entry name under `data/`.
    pub key: String,
    /// The element type (`None` for an untyped storage whose dtype comes with the tensor).
    pub dtype: Option<StorageDType>,
    /// Number of elements (bytes for untyped storages) the storage holds.
    pub numel: usize,
}

/// A strided view of a storage, as `_rebuild_tensor_v2` describes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub dtype: StorageDType,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A shared, mutable container (pickle's memo makes lists and dicts shareable).
pub(crate) type Shared<T> = Rc<RefCell<T>>;

/// A value built by the machine.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits (kept opaque).
    BigInt,
    #[allow(dead_code)] // kept for Debug output and tests
    Float(f64),
    Str(Rc<str>),
    #[allow(dead_code)] // kept for Debug output
    Bytes(Rc<[u8]>),
    Tuple(Rc<[Value]>),
    List(Shared<Vec<Value>>),
    Dict(Shared<Vec<(Value, Value)>>),
    /// `module.name`, not resolved.
    Global(Rc<str>, Rc<str>),
    Storage(StorageRef),
    Tensor(Rc<TensorRef>),
    /// An instance of a class we do not model (its contents are not needed).
    #[allow(dead_code)] // the class name, kept for Debug output
    Object(Rc<str>),
    /// The mark pushed by MARK.
    Mark,
}

impl Value {
    fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) if *i >= 0 => usize::try_from(*i).ok(),
            Value::Bool(b) => Some(usize::from(*b)),
            _ => None,
        }
    }
}

/// Most values a pickle may build, copy or memoize. A real `data.pkl` makes a few dozen per
/// tensor, so this admits state dicts of hundreds of thousands of tensors while keeping the
/// machine's memory near 1 GiB at worst (values are a few dozen bytes), whatever the memo tricks.
pub(crate) const MAX_PICKLE_VALUES: usize = 1 << 24;

/// Most dimensions a tensor may have (PyTorch's own kernels stop at 25).
const MAX_DIMS: usize = 64;

/// Executes a pickle and returns the value it builds.
pub(crate) fn load(data: &[u8]) -> PResult<Value> {
    Machine::new(data).run()
}

#[cfg(test)]
mod tests {
    use super::machine::long_from_bytes;
    use super::*;

    #[test]
    fn small_programs() {
        // {'a': [1, -2, 3.5], 'b': ('x', True, None)} at protocol 2.
        let data: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00eX\x01\x00\x00\x00bq\x03X\x01\x00\x00\x00xq\x04\x88N\x87q\x05u.";
        let v = load(data).expect("program runs");
        let Value::Dict(d) = v else {
            panic!("not a dict")
        };
        let d = d.borrow();
        assert_eq!(d.len(), 2);
        match &d[0].1 {
            Value::List(l) => {
                let l = l.borrow();
                assert!(matches!(l[0], Value::Int(1)));
                assert!(matches!(l[1], Value::Int(-2)));
                assert!(matches!(l[2], Value::Float(f) if f == 3.5));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&d[1].1, Value::Tuple(t) if t.len() == 3));
    }

    #[test]
    fn damaged_programs_are_errors_not_panics() {
        let good: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x05u.";
        assert!(load(good).is_ok());
        for cut in 0..good.len() {
            assert!(load(&good[..cut]).is_err(), "prefix of {cut} bytes");
        }
        assert!(matches!(load(b"h\x07."), Err(PickleError::Malformed(_))));
        assert!(matches!(
            load(b"\xff"),
            Err(PickleError::UnknownOpcode(0xff, 0))
        ));
        assert!(load(b"u.").is_err());
        assert!(load(b"X\xff\xff\xff\xff").is_err());
        assert!(matches!(long_from_bytes(&[0xff]), Value::Int(-1)));
        assert!(matches!(long_from_bytes(&[0x00, 0x01]), Value::Int(256)));
    }
}
