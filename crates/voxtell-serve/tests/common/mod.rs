//! A real server on an ephemeral loopback port with the committed tiny model
//! (fixtures/fusion/cfg_a, patch 32³) and the official-format bank of fixtures/infer/predict, and a
//! small HTTP client for it.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use voxtell_fusion::ModelDir;
use voxtell_infer::{PredictOptions, Predictor};
use voxtell_serve::{ServeConfig, Server};
use voxtell_text::{EmbeddingBank, PromptVectors};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn config() -> ServeConfig {
    ServeConfig { log: false, cache_memory: 256 << 20, max_upload: 64 << 20, ..ServeConfig::new("cfg_a") }
}

/// The tiny model's predictor with the fixture bank.
pub fn predictor(options: PredictOptions) -> Predictor {
    let device = candle_core::Device::Cpu;
    let bank = EmbeddingBank::read(fixtures().join("infer/predict/bank.npz")).unwrap();
    let vectors = PromptVectors::new(bank, None, candle_core::DType::F32, &device);
    let folder = ModelDir::open(fixtures().join("fusion/cfg_a")).unwrap();
    Predictor::open(&folder, vectors, options, &device, &[]).unwrap()
}

/// A server with the tiny model and `config`.
pub fn start(config: ServeConfig) -> (Server, Client) {
    start_with(predictor(PredictOptions { max_memory: Some(1 << 30), ..PredictOptions::default() }), config)
}

/// A server with `predictor` and `config`.
pub fn start_with(predictor: Predictor, config: ServeConfig) -> (Server, Client) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let key = config.api_key.clone();
    let server = Server::start(listener, predictor, config).unwrap();
    let client = Client::new(&format!("http://{}", server.local_addr()), key.as_deref());
    (server, client)
}

/// An answer: status, headers we look at, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub disposition: Option<String>,
    pub meta: Option<String>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn detail(&self) -> String {
        self.json()["detail"].as_str().unwrap_or_else(|| panic!("no detail in {:?}", self.json())).to_string()
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub base: String,
    pub key: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base: &str, key: Option<&str>) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(120))
            .build();
        Client { base: base.to_string(), key: key.map(str::to_string), agent }
    }

    pub fn with_key(&self, key: Option<&str>) -> Self {
        Client { key: key.map(str::to_string), ..self.clone() }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let mut r = self.agent.request(method, &format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            r = r.set("Authorization", &format!("Bearer {k}"));
        }
        r
    }

    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Answer {
        let mut r = self.request(method, path);
        for (k, v) in headers {
            r = r.set(k, v);
        }
        let result = match body {
            Some(b) => r.send_bytes(b),
            None => r.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = response.status();
        let content_type = response.header("content-type").map(str::to_string);
        let disposition = response.header("content-disposition").map(str::to_string);
        let meta = response.header("x-meta").map(str::to_string);
        let mut body = Vec::new();
        response.into_reader().read_to_end(&mut body).unwrap();
        Answer { status, content_type, disposition, meta, body }
    }

    pub fn get(&self, path: &str) -> Answer {
        self.send("GET", path, &[], None)
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Answer {
        self.send("POST", path, &[("Content-Type", "application/octet-stream")], Some(body))
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Answer {
        self.send("POST", path, &[("Content-Type", "application/json")], Some(body.to_string().as_bytes()))
    }

    /// Upload and return the image id and the X-Meta object.
    pub fn upload(&self, bytes: &[u8], include_image: bool) -> (String, serde_json::Value, Answer) {
        let a = self.post(&format!("/images?include_image={include_image}"), bytes);
        assert_eq!(a.status, 200, "upload: {:?}", String::from_utf8_lossy(&a.body));
        let meta: serde_json::Value = serde_json::from_str(a.meta.as_deref().unwrap()).unwrap();
        (meta["image_id"].as_str().unwrap().to_string(), meta, a)
    }

    pub fn start_job(&self, image_id: &str, prompts: serde_json::Value) -> String {
        let a = self.post_json("/jobs", &serde_json::json!({ "image_id": image_id, "prompts": prompts }));
        assert_eq!(a.status, 200, "start job: {:?}", String::from_utf8_lossy(&a.body));
        a.json()["job_id"].as_str().unwrap().to_string()
    }

    /// Open a job's event stream; lines arrive through `next_line`.
    pub fn events(&self, job: &str) -> Events {
        let response = self.request("GET", &format!("/jobs/{job}/events")).call().unwrap();
        assert_eq!(response.header("content-type"), Some("application/x-ndjson"));
        Events { reader: std::io::BufReader::new(Box::new(response.into_reader())) }
    }

    /// Every line of a job's stream, to its end.
    pub fn all_events(&self, job: &str) -> Vec<serde_json::Value> {
        let mut e = self.events(job);
        std::iter::from_fn(|| e.next_line()).collect()
    }
}

pub struct Events {
    reader: std::io::BufReader<Box<dyn Read + Send + Sync>>,
}

impl Events {
    pub fn next_line(&mut self) -> Option<serde_json::Value> {
        use std::io::BufRead;
        let mut line = String::new();
        if self.reader.read_line(&mut line).unwrap() == 0 {
            return None;
        }
        Some(serde_json::from_str(line.trim_end()).unwrap())
    }
}

pub fn read_fixture(rel: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(rel)).unwrap()
}

pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A NIfTI-1 file (uncompressed) of an int16 volume with `affine` rows, values from `f`.
pub fn nifti_i16(shape: [usize; 3], spacing: [f32; 3], f: impl Fn(usize, usize, usize) -> i16) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let dims: [i16; 8] = [3, shape[0] as i16, shape[1] as i16, shape[2] as i16, 1, 1, 1, 1];
    for (i, d) in dims.iter().enumerate() {
        h[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    h[70..72].copy_from_slice(&4i16.to_le_bytes()); // int16
    h[72..74].copy_from_slice(&16i16.to_le_bytes());
    let pixdim: [f32; 8] = [1.0, spacing[0], spacing[1], spacing[2], 1.0, 1.0, 1.0, 1.0];
    for (i, p) in pixdim.iter().enumerate() {
        h[76 + 4 * i..80 + 4 * i].copy_from_slice(&p.to_le_bytes());
    }
    h[108..112].copy_from_slice(&352f32.to_le_bytes());
    h[252..254].copy_from_slice(&0i16.to_le_bytes()); // qform
    h[254..256].copy_from_slice(&2i16.to_le_bytes()); // sform
    let rows: [[f32; 4]; 3] =
        [[spacing[0], 0.0, 0.0, -10.0], [0.0, spacing[1], 0.0, 5.0], [0.0, 0.0, spacing[2], 2.0]];
    for (r, row) in rows.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            h[280 + 16 * r + 4 * c..284 + 16 * r + 4 * c].copy_from_slice(&v.to_le_bytes());
        }
    }
    h[344..348].copy_from_slice(b"n+1\0");
    for k in 0..shape[2] {
        for j in 0..shape[1] {
            for i in 0..shape[0] {
                h.extend_from_slice(&f(i, j, k).to_le_bytes());
            }
        }
    }
    h
}

/// A zip of files in memory.
pub fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        w.start_file(name.as_str(), options).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// The files of the fixture series `fixtures/io/dicom/<name>`, named `<name>/<file>`, sorted.
pub fn series_files(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fixtures().join("io/dicom").join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .map(|p| (format!("{name}/{}", p.file_name().unwrap().to_string_lossy()), std::fs::read(p).unwrap()))
        .collect()
}

/// A volume whose 343 tiles (128³, patch 32³, step 16) keep the tiny model busy for seconds.
pub fn big_image() -> Vec<u8> {
    nifti_i16([128, 128, 128], [1.0, 1.0, 1.0], |i, j, k| ((i * 7 + j * 3 + k) % 200) as i16 + 1)
}

pub fn small_image(seed: usize) -> Vec<u8> {
    nifti_i16([16, 16, 16], [1.5, 1.5, 2.0], |i, j, k| ((i + 2 * j + 3 * k + seed) % 50) as i16 + 1)
}
