//! Which globals a pickle may name and which it may call: PyTorch's `weights_only` policy,
//! widened to the plain data classes real checkpoints carry (see the module [`super`]).

use super::{PResult, PickleError};

/// The callables a pickle may call (REDUCE, INST, OBJ), as (module, qualname) after mapping
/// Python 2 module names. PyTorch's `weights_only` allow-list, plus the plain data types that
/// Lightning and reference checkpoints carry in their hyper-parameters and callback states.
pub(super) const CALLABLES: &[(&str, &str)] = &[
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
pub(super) const BUILTIN_DATA_TYPES: &[&str] = &[
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
pub(super) fn canonical_module(module: &str) -> &str {
    match module {
        "__builtin__" => "builtins",
        "copy_reg" => "copyreg",
        other => other,
    }
}

/// Refuses a global that no checkpoint of weights names, wherever it appears (GLOBAL,
/// STACK_GLOBAL, INST): see [`BLOCKED_MODULES`] and [`BUILTIN_DATA_TYPES`].
pub(super) fn check_reference(module: &str, name: &str) -> PResult<()> {
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

/// Whether `module.name` is a dictionary class (built as a dictionary, not an opaque object).
pub(super) fn is_dict_class(module: &str, name: &str) -> bool {
    matches!(
        (module, name),
        ("collections", "OrderedDict") | ("builtins", "dict")
    )
}
