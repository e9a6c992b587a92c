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
//! classes real checkpoints carry (see [`check_reference`] and [`Machine::call`]):
//! - a global from a module that reaches the system or the interpreter (`os`, `subprocess`,
//!   `builtins.eval`, `functools`, …) is refused wherever it appears;
//! - a global that is *called* (REDUCE, and the INST/OBJ opcodes, which call too) must be one of
//!   the tensor-rebuilding or plain-container callables of [`CALLABLES`];
//! - any other class may be *instantiated* through NEWOBJ (Python then only runs `__new__`): that
//!   is how `argparse.Namespace` arguments and Lightning/OmegaConf hyper-parameters are saved,
//!   and they become opaque objects;
//! - BUILD on a global (setting attributes of a class or module) is refused.
//!
//! The work a pickle can ask for is bounded by [`MAX_PICKLE_VALUES`]: memo references let a small
//! file copy one big list or tuple any number of times.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

/// Why a pickle could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PickleError {
    /// The stream ended inside an opcode or before STOP.
    Truncated,
    /// An opcode byte we do not know (or that protocol 5 out-of-band buffers need).
    UnknownOpcode(u8, usize),
    /// The stream is malformed (stack underflow, missing mark, bad memo reference, …).
    Malformed(String),
    /// The pickle uses a global that a checkpoint of weights has no use for (`action` says how:
    /// refers to, calls, sets attributes of).
    Forbidden {
        /// `module.qualname` as written in the file.
        global: String,
        /// How the pickle uses it.
        action: &'static str,
    },
    /// The pickle builds or copies more than [`MAX_PICKLE_VALUES`] values.
    TooManyValues,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PickleError::Truncated => write!(f, "the pickled data is truncated"),
            PickleError::UnknownOpcode(op, pos) => {
                write!(f, "unsupported pickle opcode 0x{op:02x} at byte {pos}")
            }
            PickleError::Malformed(why) => write!(f, "malformed pickle: {why}"),
            PickleError::Forbidden { global, action } => write!(
                f,
                "refusing the file: its pickle {action} {global}, which is not among the \
                 tensor-rebuilding and plain-data globals a checkpoint needs \
                 (torch.load would run it)"
            ),
            PickleError::TooManyValues => write!(
                f,
                "the pickle builds more than {MAX_PICKLE_VALUES} values (memo references \
                 copying one object over and over?)"
            ),
        }
    }
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

/// The callables a pickle may call (REDUCE, INST, OBJ), as (module, qualname) after mapping
/// Python 2 module names. PyTorch's `weights_only` allow-list, plus the plain data types that
/// Lightning and reference checkpoints carry in their hyper-parameters and callback states.
const CALLABLES: &[(&str, &str)] = &[
    // Tensors, parameters, tensor subclasses.
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._utils", "_rebuild_qtensor"),
    ("torch._utils", "_rebuild_sparse_tensor"),
    ("torch._utils", "_rebuild_meta_tensor_no_storage"),
    ("torch._utils", "_rebuild_wrapper_subclass"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    ("torch._utils", "_rebuild_device_tensor_from_cpu_tensor"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "Tensor"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch.serialization", "_get_layout"),
    // Containers and scalars (`_codecs.encode` is how protocol 2 saves `bytes`).
    ("collections", "OrderedDict"),
    ("collections", "Counter"),
    ("builtins", "dict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("builtins", "slice"),
    ("_codecs", "encode"),
    // Plain objects at protocols 0 and 1: `object.__new__(cls)`, what NEWOBJ does at protocol 2.
    ("copyreg", "_reconstructor"),
    // Paths, dates and numpy scalars or arrays in hyper-parameters and callback states.
    ("pathlib", "Path"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
    ("datetime", "datetime"),
    ("datetime", "date"),
    ("datetime", "time"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
];

/// The `builtins` a pickle may name: data types. Every other builtin (`eval`, `exec`, `getattr`,
/// `__import__`, `open`, …) is a way to run code and is refused wherever it appears.
const BUILTIN_DATA_TYPES: &[&str] = &[
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "bytearray",
    "bytes",
    "str",
    "int",
    "float",
    "complex",
    "bool",
    "slice",
    "range",
    "object",
];

/// Modules (and their submodules) whose globals are refused wherever they appear: they reach the
/// operating system or the interpreter, or turn data into calls (`functools.partial`,
/// `operator.attrgetter`). PyTorch's `weights_only` unpickler blocks the first four outright.
const BLOCKED_MODULES: &[&str] = &[
    "os",
    "posix",
    "nt",
    "sys",
    "subprocess",
    "shutil",
    "socket",
    "importlib",
    "runpy",
    "code",
    "codeop",
    "pty",
    "ctypes",
    "pickle",
    "_pickle",
    "marshal",
    "functools",
    "operator",
    "types",
    "inspect",
    "io",
    "_io",
    "tempfile",
    "multiprocessing",
    "threading",
    "signal",
    "asyncio",
    "pdb",
    "bdb",
    "timeit",
    "platform",
    "webbrowser",
    "commands",
    "popen2",
];

/// The Python 3 name of a module a Python 2 pickle names.
fn canonical_module(module: &str) -> &str {
    match module {
        "__builtin__" => "builtins",
        "copy_reg" => "copyreg",
        other => other,
    }
}

/// Refuses a global that no checkpoint of weights names, wherever it appears (GLOBAL,
/// STACK_GLOBAL, INST): see [`BLOCKED_MODULES`] and [`BUILTIN_DATA_TYPES`].
fn check_reference(module: &str, name: &str) -> PResult<()> {
    let m = canonical_module(module);
    if CALLABLES.contains(&(m, name)) {
        return Ok(());
    }
    let blocked = match m {
        "builtins" => !BUILTIN_DATA_TYPES.contains(&name),
        "copyreg" => true,
        _ => BLOCKED_MODULES
            .iter()
            .any(|b| m == *b || m.strip_prefix(b).is_some_and(|rest| rest.starts_with('.'))),
    };
    if blocked {
        return Err(PickleError::Forbidden {
            global: format!("{module}.{name}"),
            action: "refers to",
        });
    }
    Ok(())
}

/// Executes a pickle and returns the value it builds.
pub(crate) fn load(data: &[u8]) -> PResult<Value> {
    Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        values: 0,
    }
    .run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// Values built, copied or memoized so far (see [`MAX_PICKLE_VALUES`]).
    values: usize,
}

impl<'a> Machine<'a> {
    /// Counts `n` more values against [`MAX_PICKLE_VALUES`], before they are made.
    fn charge(&mut self, n: usize) -> PResult<()> {
        self.values = self.values.saturating_add(n);
        if self.values > MAX_PICKLE_VALUES {
            return Err(PickleError::TooManyValues);
        }
        Ok(())
    }

    fn push(&mut self, v: Value) -> PResult<()> {
        self.charge(1)?;
        self.stack.push(v);
        Ok(())
    }

    /// A copy of the items of a tuple or list (`None` for other values).
    fn items(&mut self, v: &Value) -> PResult<Option<Vec<Value>>> {
        let n = match v {
            Value::Tuple(items) => items.len(),
            Value::List(items) => items.borrow().len(),
            _ => return Ok(None),
        };
        self.charge(n)?;
        Ok(match v {
            Value::Tuple(items) => Some(items.to_vec()),
            Value::List(items) => Some(items.borrow().clone()),
            _ => None,
        })
    }

    /// The items of a tuple or list of non-negative integers.
    fn usize_items(&mut self, v: Option<&Value>) -> PResult<Option<Vec<usize>>> {
        let Some(v) = v else { return Ok(None) };
        Ok(self
            .items(v)?
            .and_then(|items| items.iter().map(Value::as_usize).collect()))
    }

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(PickleError::Truncated)?;
        let bytes = self.data.get(self.pos..end).ok_or(PickleError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len_u64(&mut self) -> PResult<usize> {
        usize::try_from(u64::from_le_bytes(self.le()?)).map_err(|_| PickleError::Truncated)
    }

    /// A text line (protocol 0 arguments), without the newline.
    fn line(&mut self) -> PResult<&'a str> {
        let rest = self.data.get(self.pos..).ok_or(PickleError::Truncated)?;
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated)?;
        let line = &rest[..n];
        self.pos += n + 1;
        std::str::from_utf8(line).or_else(|_| malformed("a text argument is not UTF-8"))
    }

    fn pop(&mut self) -> PResult<Value> {
        match self.stack.pop() {
            Some(Value::Mark) | None => malformed("stack underflow"),
            Some(v) => Ok(v),
        }
    }

    fn top(&mut self) -> PResult<&mut Value> {
        self.stack
            .last_mut()
            .ok_or(PickleError::Malformed("stack underflow".into()))
    }

    /// Pops everything above the last mark (and the mark).
    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let Some(at) = self.marks.pop() else {
            return malformed("no mark on the stack");
        };
        if at > self.stack.len() {
            return malformed("mark above the stack");
        }
        let items = self.stack.split_off(at);
        // Remove the mark itself.
        match self.stack.pop() {
            Some(Value::Mark) => Ok(items),
            _ => malformed("mark lost"),
        }
    }

    fn memo_get(&self, idx: u64) -> PResult<Value> {
        match self.memo.get(&idx) {
            Some(v) => Ok(v.clone()),
            None => malformed(format!("memo entry {idx} is not defined")),
        }
    }

    fn memo_put(&mut self, idx: u64) -> PResult<()> {
        let v = match self.stack.last() {
            Some(Value::Mark) | None => return malformed("nothing to memoize"),
            Some(v) => v.clone(),
        };
        self.charge(1)?;
        self.memo.insert(idx, v);
        Ok(())
    }

    fn push_str(&mut self, bytes: &[u8]) -> PResult<()> {
        let s = std::str::from_utf8(bytes).or_else(|_| malformed("a string is not UTF-8"))?;
        self.push(Value::Str(s.into()))
    }

    fn run(mut self) -> PResult<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME: a hint only
                }
                b'.' => return self.pop(), // STOP
                b'(' => {
                    self.marks.push(self.stack.len() + 1);
                    self.push(Value::Mark)?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Value::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Value::Int(v as i64))?;
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4: little-endian two's complement of n bytes.
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        let n = i32::from_le_bytes(self.le()?);
                        usize::try_from(n).or_else(|_| malformed("negative LONG4 length"))?
                    };
                    let bytes = self.take(n)?;
                    self.push(long_from_bytes(bytes))?;
                }
                b'I' => {
                    let line = self.line()?;
                    let v = match line {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().or_else(|_| malformed("bad INT"))?),
                    };
                    self.push(v)?;
                }
                b'L' => {
                    let line = self.line()?.trim_end_matches('L');
                    self.push(line.parse().map(Value::Int).unwrap_or(Value::BigInt))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(Value::Float(v))?;
                }
                b'F' => {
                    let v = self.line()?.parse().or_else(|_| malformed("bad FLOAT"))?;
                    self.push(Value::Float(v))?;
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    let bytes = self.take(n)?;
                    self.push_str(bytes)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    self.push_str(bytes)?;
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let bytes = self.take(n)?;
                    self.push_str(bytes)?;
                }
                b'T' | b'U' => {
                    // BINSTRING / SHORT_BINSTRING: Python 2 byte strings, read as Latin-1.
                    let n = if op == b'T' {
                        let n = i32::from_le_bytes(self.le()?);
                        usize::try_from(n).or_else(|_| malformed("negative BINSTRING length"))?
                    } else {
                        self.u8()? as usize
                    };
                    let s: String = self.take(n)?.iter().map(|&b| b as char).collect();
                    self.push(Value::Str(s.into()))?;
                }
                b'V' => {
                    let line = self.line()?;
                    self.push(Value::Str(line.into()))?;
                }
                b'S' => {
                    let line = self.line()?;
                    let s = line.trim_matches(|c| c == '\'' || c == '"');
                    self.push(Value::Str(s.into()))?;
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => u32::from_le_bytes(self.le()?) as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let bytes = self.take(n)?;
                    self.push(Value::Bytes(bytes.into()))?;
                }
                b')' => self.push(Value::Tuple(Rc::from(Vec::new())))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items.into()))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return malformed("stack underflow in TUPLEn");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    if items.iter().any(|v| matches!(v, Value::Mark)) {
                        return malformed("mark inside TUPLEn");
                    }
                    self.push(Value::Tuple(items.into()))?;
                }
                b']' => self.push(Value::List(Rc::default()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                0x8f => self.push(Value::List(Rc::default()))?, // EMPTY_SET
                0x90 => {
                    let items = self.pop_mark()?; // ADDITEMS
                    self.append(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?; // FROZENSET
                    self.push(Value::List(Rc::new(RefCell::new(items))))?;
                }
                b'}' => self.push(Value::Dict(Rc::default()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.push(Value::Dict(Rc::new(RefCell::new(pairs))))?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    check_reference(module, name)?;
                    self.push(Value::Global(module.into(), name.into()))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            check_reference(&m, &n)?;
                            self.push(Value::Global(m, n))?;
                        }
                        _ => return malformed("STACK_GLOBAL needs two strings"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(&callable, &args, false)?;
                    self.push(v)?;
                }
                0x81 => {
                    let _args = self.pop()?; // NEWOBJ
                    let cls = self.pop()?;
                    self.push(instantiate(&cls)?)?;
                }
                0x92 => {
                    let _kwargs = self.pop()?; // NEWOBJ_EX
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(instantiate(&cls)?)?;
                }
                b'o' => {
                    // OBJ calls the class with the arguments: a call like REDUCE.
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return malformed("OBJ without a class");
                    }
                    let cls = items.remove(0);
                    let v = self.call(&cls, &Value::Tuple(items.into()), false)?;
                    self.push(v)?;
                }
                b'i' => {
                    // INST: a call like REDUCE, with the class named inline.
                    let module = self.line()?;
                    let name = self.line()?;
                    check_reference(module, name)?;
                    let items = self.pop_mark()?;
                    let cls = Value::Global(module.into(), name.into());
                    let v = self.call(&cls, &Value::Tuple(items.into()), false)?;
                    self.push(v)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    build(target, state)?;
                }
                b'p' => {
                    let idx = self
                        .line()?
                        .parse()
                        .or_else(|_| malformed("bad PUT index"))?;
                    self.memo_put(idx)?;
                }
                b'q' => {
                    let idx = self.u8()? as u64;
                    self.memo_put(idx)?;
                }
                b'r' => {
                    let idx = u32::from_le_bytes(self.le()?) as u64;
                    self.memo_put(idx)?;
                }
                0x94 => {
                    let idx = self.memo.len() as u64;
                    self.memo_put(idx)?;
                }
                b'g' => {
                    let idx = self
                        .line()?
                        .parse()
                        .or_else(|_| malformed("bad GET index"))?;
                    let v = self.memo_get(idx)?;
                    self.push(v)?;
                }
                b'h' => {
                    let idx = self.u8()? as u64;
                    let v = self.memo_get(idx)?;
                    self.push(v)?;
                }
                b'j' => {
                    let idx = u32::from_le_bytes(self.le()?) as u64;
                    let v = self.memo_get(idx)?;
                    self.push(v)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.push(v)?;
                }
                b'P' => {
                    let _pid = self.line()?;
                    self.push(Value::Object("persistent id".into()))?;
                }
                other => return Err(PickleError::UnknownOpcode(other, at)),
            }
        }
    }

    fn append(&mut self, items: Vec<Value>) -> PResult<()> {
        match self.top()? {
            Value::List(list) => {
                list.borrow_mut().extend(items);
                Ok(())
            }
            // Appending to an object we do not model (a custom list subclass): ignore.
            Value::Object(_) => Ok(()),
            _ => malformed("APPEND to something that is not a list"),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> PResult<()> {
        let pairs = pairs(items)?;
        match self.top()? {
            Value::Dict(dict) => {
                dict.borrow_mut().extend(pairs);
                Ok(())
            }
            Value::Object(_) => Ok(()),
            _ => malformed("SETITEM on something that is not a dict"),
        }
    }

    /// `callable(*args)` for the callables of [`CALLABLES`]; any other call refuses the file.
    /// `nested` is set inside `_rebuild_from_type_v2`, which may not nest itself (a list holding
    /// itself would otherwise recurse without end).
    fn call(&mut self, callable: &Value, args: &Value, nested: bool) -> PResult<Value> {
        let Value::Global(module, name) = callable else {
            return Err(PickleError::Forbidden {
                global: "an object the pickle built itself".into(),
                action: "calls",
            });
        };
        let forbidden = || PickleError::Forbidden {
            global: format!("{module}.{name}"),
            action: "calls",
        };
        let qualified = (canonical_module(module), &**name);
        if !CALLABLES.contains(&qualified) {
            return Err(forbidden());
        }
        let args = self.items(args)?.unwrap_or_default();
        match qualified {
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2") => {
                self.rebuild_tensor(&args, None)
            }
            ("torch._utils", "_rebuild_tensor_v3") => {
                let dtype = match args.get(6) {
                    Some(Value::Global(_, n)) => StorageDType::from_name(n),
                    _ => None,
                };
                self.rebuild_tensor(&args, dtype)
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")
            | ("torch.nn.parameter", "Parameter") => match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => Ok(Value::Object("parameter".into())),
            },
            ("torch._tensor", "_rebuild_from_type_v2") => {
                // (func, new_type, args, state): the tensor is func(*args), its Python subclass
                // and attributes do not matter here.
                if nested {
                    return malformed("nested _rebuild_from_type_v2");
                }
                match (args.first(), args.get(2)) {
                    (Some(func), Some(inner)) => self.call(func, inner, true),
                    _ => Ok(Value::Object("tensor subclass".into())),
                }
            }
            (m, n) if is_dict_class(m, n) => {
                // OrderedDict() or OrderedDict([(k, v), …]).
                let mut out = Vec::new();
                if let Some(first) = args.first()
                    && let Some(pairs) = self.items(first)?
                {
                    for pair in pairs {
                        if let Some(kv) = self.items(&pair)?
                            && let [k, v] = kv.as_slice()
                        {
                            out.push((k.clone(), v.clone()));
                        }
                    }
                }
                Ok(Value::Dict(Rc::new(RefCell::new(out))))
            }
            ("torch", "Size") => {
                let dims = match args.first() {
                    Some(v) => self.items(v)?.unwrap_or_default(),
                    None => Vec::new(),
                };
                Ok(Value::Tuple(dims.into()))
            }
            ("builtins", "set" | "frozenset") => {
                let items = match args.first() {
                    Some(v) => self.items(v)?.unwrap_or_default(),
                    None => Vec::new(),
                };
                Ok(Value::List(Rc::new(RefCell::new(items))))
            }
            ("copyreg", "_reconstructor") => match args.as_slice() {
                // `base.__new__(cls, state)`, then `base.__init__(obj, state)` unless the base
                // is `object`: only built-in data types may be the base, or it is a call.
                [cls, Value::Global(bm, bn), ..]
                    if canonical_module(bm) == "builtins"
                        && BUILTIN_DATA_TYPES.contains(&&**bn) =>
                {
                    instantiate(cls)
                }
                [_, Value::Global(bm, bn), ..] => Err(PickleError::Forbidden {
                    global: format!("{bm}.{bn}"),
                    action: "calls",
                }),
                _ => malformed("copyreg._reconstructor needs a class and a base class"),
            },
            (m, n) => Ok(Value::Object(format!("{m}.{n}").into())),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, …)`.
    fn rebuild_tensor(&mut self, args: &[Value], dtype: Option<StorageDType>) -> PResult<Value> {
        let Some(Value::Storage(storage)) = args.first() else {
            // A tensor not backed by a plain storage (meta, sparse, …): not loadable, not fatal.
            return Ok(Value::Object("unsupported tensor".into()));
        };
        let offset = args.get(1).and_then(Value::as_usize);
        let size = self.usize_items(args.get(2))?;
        let stride = self.usize_items(args.get(3))?;
        let (Some(offset), Some(size), Some(stride)) = (offset, size, stride) else {
            return malformed(format!(
                "the tensor over storage data/{} has a negative or non-integer offset, size or \
                 stride",
                storage.key
            ));
        };
        if size.len() != stride.len() {
            return malformed("tensor size and stride differ in length");
        }
        if size.len() > MAX_DIMS {
            return malformed(format!(
                "a tensor has {} dimensions (at most {MAX_DIMS} are accepted)",
                size.len()
            ));
        }
        let Some(dtype) = dtype.or(storage.dtype) else {
            return Ok(Value::Object("untyped tensor".into()));
        };
        Ok(Value::Tensor(Rc::new(TensorRef {
            storage: storage.clone(),
            dtype,
            offset,
            size,
            stride,
        })))
    }

    /// `persistent_load(('storage', StorageClass, key, location, numel))`.
    fn persistent_load(&mut self, pid: &Value) -> PResult<Value> {
        let Some(items) = self.items(pid)? else {
            return Ok(Value::Object("persistent id".into()));
        };
        match items.as_slice() {
            [
                Value::Str(kind),
                class,
                Value::Str(key),
                _location,
                numel,
                ..,
            ] if &**kind == "storage" => {
                let dtype = match class {
                    Value::Global(_, n) => StorageDType::from_name(n),
                    _ => None,
                };
                let numel = numel.as_usize().ok_or(PickleError::Malformed(
                    "storage size is not a number".into(),
                ))?;
                Ok(Value::Storage(StorageRef {
                    key: key.to_string(),
                    dtype,
                    numel,
                }))
            }
            _ => Ok(Value::Object("persistent id".into())),
        }
    }
}

fn pairs(items: Vec<Value>) -> PResult<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return malformed("odd number of dict items");
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn long_from_bytes(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() > 8 {
        return Value::BigInt;
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
    buf[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(buf))
}

/// NEWOBJ: `cls.__new__(cls, *args)`. Python runs no `__init__` here, so any class the reference
/// check let through may be instantiated; dict classes become dicts, others opaque objects.
fn instantiate(cls: &Value) -> PResult<Value> {
    match cls {
        Value::Global(m, n) if is_dict_class(canonical_module(m), n) => {
            Ok(Value::Dict(Rc::default()))
        }
        Value::Global(m, n) => Ok(Value::Object(format!("{m}.{n}").into())),
        _ => malformed("NEWOBJ of something that is not a class"),
    }
}

fn is_dict_class(module: &str, name: &str) -> bool {
    matches!(
        (module, name),
        ("collections", "OrderedDict") | ("builtins", "dict")
    )
}

/// BUILD: attaches state; we do not need the state of the objects we keep opaque. On a global it
/// would set attributes of a class or module (how a pickle rewires code): refused.
fn build(target: &mut Value, _state: Value) -> PResult<()> {
    if let Value::Global(m, n) = target {
        return Err(PickleError::Forbidden {
            global: format!("{m}.{n}"),
            action: "sets attributes of",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
