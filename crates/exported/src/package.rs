//! What an exported file records about itself, read before any of its code is loaded:
//! an AOTInductor package's device, CPU features and input checks (from the generated
//! wrapper that AOTInductor puts in every package), and volt_export's metadata when it
//! wrote the file.
use crate::metadata::VoltMetadata;
use crate::ExportError;
use regex::Regex;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use volt_serve::tensor::{DType, Dim};

/// What a package's generated wrapper checks of one input (AOTInductor's runtime input
/// checks, which volt switches on).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InputCheck {
    /// The dtype the model was compiled for.
    pub dtype: Option<DType>,
    /// Each dimension's size or bounds, all dimensions included.
    pub dims: Vec<Dim>,
}

/// An AOTInductor package, as read from its archive.
#[derive(Debug)]
pub struct AotiPackage {
    /// The model's name inside the package (`model` unless packaged under another).
    pub model_name: String,
    /// AOTInductor's metadata (`AOTI_DEVICE_KEY`, `AOTI_CPU_ISA`, and volt's under `volt`).
    pub metadata: HashMap<String, String>,
    /// volt_export's metadata, when the package has it.
    pub volt: Option<VoltMetadata>,
    /// Per input, what the wrapper checks; `None` when the wrapper could not be read.
    pub checks: Option<Vec<InputCheck>>,
    /// The outputs' names as the wrapper gives them (`output0`, ...).
    pub output_names: Vec<String>,
}

fn zip_error(path: &Path, what: &str, e: impl std::fmt::Display) -> ExportError {
    ExportError::Package(format!("{}: {what}: {e}", path.display()))
}

/// The archive's entries' names, or an error saying the file is no zip.
fn open_zip(path: &Path, kind: &str) -> Result<zip::ZipArchive<std::fs::File>, ExportError> {
    let file = std::fs::File::open(path).map_err(|e| zip_error(path, "cannot open", e))?;
    zip::ZipArchive::new(file).map_err(|e| zip_error(path, &format!("not {kind} (not a zip archive)"), e))
}

fn read_entry(
    zip: &mut zip::ZipArchive<std::fs::File>,
    path: &Path,
    name: &str,
) -> Result<String, ExportError> {
    let mut entry = zip.by_name(name).map_err(|e| zip_error(path, &format!("cannot read {name}"), e))?;
    let mut text = String::new();
    entry.read_to_string(&mut text).map_err(|e| zip_error(path, &format!("{name} is corrupt"), e))?;
    Ok(text)
}

impl AotiPackage {
    /// Reads a `.pt2` package written by `aoti_compile_and_package`.
    pub fn read(path: &Path) -> Result<Self, ExportError> {
        let kind = "an AOTInductor package (.pt2)";
        let mut zip = open_zip(path, kind)?;
        let names: Vec<String> = zip.file_names().map(str::to_owned).collect();
        // <archive>/data/aotinductor/<model>/<files>
        let mut models: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in &names {
            let parts: Vec<&str> = name.split('/').collect();
            if let Some(i) = parts.windows(2).position(|w| w == ["data", "aotinductor"]) {
                if parts.len() > i + 3 {
                    models.entry(parts[i + 2].to_owned()).or_default().push(name.clone());
                }
            }
        }
        let model_name = match (models.contains_key("model"), models.len()) {
            (_, 0) => {
                return Err(ExportError::Package(format!(
                    "{}: not {kind}: it holds no data/aotinductor/ model (a torch.export archive \
                     needs compiling first: torch._inductor.aoti_compile_and_package)",
                    path.display()
                )))
            }
            (true, _) => "model".to_owned(),
            (false, 1) => models.keys().next().cloned().unwrap_or_default(),
            (false, _) => {
                return Err(ExportError::Package(format!(
                    "{}: the package holds several models ({}); volt serves one named `model`",
                    path.display(),
                    models.keys().cloned().collect::<Vec<_>>().join(", ")
                )))
            }
        };
        let files = &models[&model_name];
        let find = |suffix: &str| files.iter().find(|f| f.ends_with(suffix)).cloned();
        if find(".so").is_none() {
            return Err(ExportError::Package(format!(
                "{}: the package's model {model_name} has no compiled library (.so)",
                path.display()
            )));
        }
        let metadata: HashMap<String, String> = match find(".wrapper_metadata.json") {
            Some(name) => {
                let text = read_entry(&mut zip, path, &name)?;
                serde_json::from_str(&text)
                    .map_err(|e| zip_error(path, &format!("{name} is not metadata"), e))?
            }
            None => HashMap::new(),
        };
        let volt = metadata
            .get("volt")
            .map(|text| VoltMetadata::parse(text).map_err(|e| zip_error(path, "volt_export's metadata", e)))
            .transpose()?;
        let (checks, output_names) = match find(".wrapper.cpp") {
            Some(name) => {
                let source = read_entry(&mut zip, path, &name)?;
                (parse_checks(&source), parse_names(&source, "outputs_info_"))
            }
            None => (None, Vec::new()),
        };
        // Every entry is read once, so that a damaged archive is refused here and not
        // half-extracted by the loader.
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(|e| zip_error(path, "corrupt archive", e))?;
            let name = entry.name().to_owned();
            std::io::copy(&mut entry, &mut std::io::sink())
                .map_err(|e| zip_error(path, &format!("{name} is corrupt"), e))?;
        }
        Ok(AotiPackage { model_name, metadata, volt, checks, output_names })
    }

    /// The device the package was compiled for (`cpu`, `cuda`).
    pub fn device(&self) -> &str {
        self.metadata.get("AOTI_DEVICE_KEY").map_or("cpu", String::as_str)
    }

    /// CPU features the package was compiled with that this CPU lacks.
    pub fn missing_cpu_features(&self) -> Vec<String> {
        let recorded = self.metadata.get("AOTI_CPU_ISA").map_or("", String::as_str);
        recorded.split_whitespace().filter(|isa| !cpu_has(isa)).map(str::to_owned).collect()
    }
}

/// Whether this CPU has an ISA as AOTInductor names it (`AVX512`, `AVX2`); ISAs volt
/// cannot test for count as present (the compiler does not emit them on its own).
fn cpu_has(isa: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            "AVX512" => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
            "AVX2" => {
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
            }
            _ => true,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        true
    }
}

/// `volt.json` inside a TorchScript archive (written by volt_export as an extra file).
pub fn torchscript_metadata(path: &Path) -> Result<Option<VoltMetadata>, ExportError> {
    let mut zip = open_zip(path, "a TorchScript module (torch.jit.save's zip)")?;
    let names: Vec<String> = zip.file_names().map(str::to_owned).collect();
    if !names.iter().any(|n| n.ends_with("/data.pkl") || n == "data.pkl") {
        return Err(ExportError::Package(format!(
            "{}: not a TorchScript module (no data.pkl inside; an AOTInductor package is served with --aoti)",
            path.display()
        )));
    }
    match names.iter().find(|n| n.ends_with("extra/volt.json")) {
        Some(name) => {
            let text = read_entry(&mut zip, path, &name.clone())?;
            VoltMetadata::parse(&text).map(Some).map_err(|e| zip_error(path, "volt_export's metadata", e))
        }
        None => Ok(None),
    }
}

/// `field[i].name = "..."` assignments of the wrapper, in index order.
fn parse_names(source: &str, field: &str) -> Vec<String> {
    let Ok(re) = Regex::new(&format!(r#"{field}\[(\d+)\]\.name = "([^"]*)""#)) else { return Vec::new() };
    let mut found: BTreeMap<usize, String> = BTreeMap::new();
    for c in re.captures_iter(source) {
        if let Ok(i) = c[1].parse() {
            found.insert(i, c[2].to_owned());
        }
    }
    found.into_values().collect()
}

/// The input checks AOTInductor generated into the wrapper (`check_input_N`): dtype,
/// fixed sizes, and the bounds of dynamic sizes. `None` when the wrapper has none.
pub fn parse_checks(source: &str) -> Option<Vec<InputCheck>> {
    let count = parse_names(source, "inputs_info_").len();
    let pattern = |p: &str| Regex::new(p).ok();
    let dtype =
        pattern(r#"input_handles\[(\d+)\]: unmatched dtype, "\s*<< "expected: " << \w+ << "\(at::k(\w+)\)"#)?;
    let fixed = pattern(r#"input_handles\[(\d+)\]: unmatched dim value at (\d+), "\s*<< "expected: (\d+),"#)?;
    let low = pattern(
        r#"input_handles\[(\d+)\]: dim value is too small at (\d+), "\s*<< "expected it to be >= (\d+),"#,
    )?;
    let high = pattern(
        r#"input_handles\[(\d+)\]: dim value is too large at (\d+), "\s*<< "expected to be <= (\d+),"#,
    )?;
    let stride = pattern(r#"input_handles\[(\d+)\]: unmatched stride value at (\d+),"#)?;
    if count == 0 || !dtype.is_match(source) {
        return None;
    }
    let num = |s: &str| s.parse::<usize>().ok();
    let mut checks = vec![InputCheck::default(); count];
    let mut sizes: Vec<BTreeMap<usize, Checked>> = vec![BTreeMap::new(); count];
    for c in dtype.captures_iter(source) {
        let i = num(&c[1])?;
        checks.get_mut(i)?.dtype = Some(aten_dtype(&c[2])?);
    }
    for c in fixed.captures_iter(source) {
        sizes.get_mut(num(&c[1])?)?.entry(num(&c[2])?).or_insert((None, 0, None)).0 = num(&c[3]);
    }
    for c in low.captures_iter(source) {
        sizes.get_mut(num(&c[1])?)?.entry(num(&c[2])?).or_insert((None, 0, None)).1 = num(&c[3])?;
    }
    for c in high.captures_iter(source) {
        sizes.get_mut(num(&c[1])?)?.entry(num(&c[2])?).or_insert((None, 0, None)).2 = num(&c[3]);
    }
    for c in stride.captures_iter(source) {
        sizes.get_mut(num(&c[1])?)?.entry(num(&c[2])?).or_insert((None, 0, None));
    }
    for (check, dims) in checks.iter_mut().zip(sizes) {
        let rank = dims.keys().next_back().map_or(0, |&d| d + 1);
        check.dims = (0..rank)
            .map(|d| match dims.get(&d) {
                Some((Some(n), _, _)) => Dim::Fixed(*n),
                Some((None, min, max)) => Dim::Dynamic { min: *min, max: *max },
                None => Dim::Dynamic { min: 0, max: None },
            })
            .collect();
    }
    Some(checks)
}

/// What the wrapper checks of one dimension: a fixed size, or a minimum and maximum.
type Checked = (Option<usize>, usize, Option<usize>);

/// A dtype from ATen's scalar-type name (`Float` of `at::kFloat`).
fn aten_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "Float" => DType::F32,
        "Double" => DType::F64,
        "Half" => DType::F16,
        "BFloat16" => DType::BF16,
        "Long" => DType::I64,
        "Int" => DType::I32,
        "Short" => DType::I16,
        "Char" => DType::I8,
        "Byte" => DType::U8,
        "Bool" => DType::Bool,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRAPPER: &str = r#"
    inputs_info_[0].name = "arg2_1";
    inputs_info_[1].name = "arg3_1";
    outputs_info_[0].name = "output0";
        ss << "input_handles[0]: unmatched dtype, "
           << "expected: " << arg2_1_expected_dtype << "(at::kFloat), "
        ss << "input_handles[0]: dim value is too small at 0, "
           << "expected it to be >= 2, " << "but got: "
        ss << "input_handles[0]: dim value is too large at 0, "
           << "expected to be <= 64, " << "but got: "
        ss << "input_handles[0]: unmatched dim value at 1, "
           << "expected: 4, " << "but got: " << arg2_1_size[1]
        ss << "input_handles[0]: unmatched stride value at 0, "
        ss << "input_handles[0]: unmatched stride value at 1, "
        ss << "input_handles[1]: unmatched dtype, "
           << "expected: " << arg3_1_expected_dtype << "(at::kLong), "
        ss << "input_handles[1]: dim value is too small at 0, "
           << "expected it to be >= 2, " << "but got: "
        ss << "input_handles[1]: unmatched stride value at 0, "
        ss << "input_handles[1]: unmatched stride value at 1, "
    "#;

    #[test]
    fn the_wrappers_checks_give_dtypes_sizes_and_bounds() {
        let checks = parse_checks(WRAPPER).expect("checks");
        assert_eq!(
            checks,
            vec![
                InputCheck {
                    dtype: Some(DType::F32),
                    dims: vec![Dim::Dynamic { min: 2, max: Some(64) }, Dim::Fixed(4)]
                },
                InputCheck {
                    dtype: Some(DType::I64),
                    dims: vec![Dim::Dynamic { min: 2, max: None }, Dim::Dynamic { min: 0, max: None }]
                },
            ]
        );
        assert_eq!(parse_names(WRAPPER, "outputs_info_"), vec!["output0"]);
        assert_eq!(parse_checks("int main() {}"), None);
    }
}
