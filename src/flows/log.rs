//! The JSON-lines flow log (`flows.log`): one `FlowView` per line, rotated
//! when the next line would take the file past `max_size`: `FILE` becomes
//! `FILE.1`, `FILE.1` becomes `FILE.2`, ... and `FILE.<keep>` is deleted, so
//! the log never takes more than `(keep + 1) × max_size` bytes.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use super::record::FlowView;

pub struct FlowLog {
    path: PathBuf,
    max_size: u64,
    keep: u32,
    file: Option<BufWriter<File>>,
    size: u64,
}

impl FlowLog {
    /// Opens (appending to) `path`, creating its directory if needed.
    pub fn open(path: &Path, max_size: u64, keep: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut log = FlowLog {
            path: path.to_path_buf(),
            max_size,
            keep,
            file: None,
            size: 0,
        };
        log.reopen()?;
        Ok(log)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = f.metadata()?.len();
        self.file = Some(BufWriter::new(f));
        Ok(())
    }

    /// Appends one record (buffered; see [`FlowLog::flush`]).
    pub fn write(&mut self, v: &FlowView) -> io::Result<()> {
        let mut line = serde_json::to_vec(v).map_err(io::Error::other)?;
        line.push(b'\n');
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.max_size {
            self.rotate()?;
        }
        let f = match &mut self.file {
            Some(f) => f,
            None => {
                self.reopen()?;
                self.file.as_mut().expect("just opened")
            }
        };
        f.write_all(&line)?;
        self.size += len;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush()?;
        }
        let _ = fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        fs::rename(&self.path, self.rotated(1))?;
        self.reopen()
    }
}

impl Drop for FlowLog {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::record::{tests::directory, tests::drop_event, FlowRecord};

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("porin-flowlog-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_log_rotates_at_its_size_and_keeps_n_files() {
        let dir = tempdir("rotate");
        let path = dir.join("sub/flows.jsonl");
        let view = FlowRecord::enrich(1, 0, drop_event(), &directory()).view();
        let line = serde_json::to_vec(&view).unwrap().len() as u64 + 1;
        // Room for 3 lines per file.
        let mut log = FlowLog::open(&path, line * 3 + 1, 2).unwrap();
        for _ in 0..20 {
            log.write(&view).unwrap();
        }
        log.flush().unwrap();
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= line * 3 + 1);
        assert_eq!(size(&path), line * 2, "20 = 6 files of 3 + 2");
        assert_eq!(size(&log.rotated(1)), line * 3);
        assert_eq!(size(&log.rotated(2)), line * 3);
        assert!(!log.rotated(3).exists(), "only `keep` rotated files");
        // Every line is one JSON object with Hubble's names.
        let text = fs::read_to_string(&path).unwrap();
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["verdict"], "DROPPED");
            assert_eq!(v["source"]["container_name"], "sensor-1");
        }
        // Reopening appends and knows the size.
        drop(log);
        let mut log = FlowLog::open(&path, line * 3 + 1, 2).unwrap();
        log.write(&view).unwrap();
        log.write(&view).unwrap();
        log.flush().unwrap();
        assert_eq!(size(&path), line, "rotated on the 4th line");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_line_larger_than_the_cap_still_goes_to_a_fresh_file() {
        let dir = tempdir("big");
        let path = dir.join("flows.jsonl");
        let view = FlowRecord::enrich(1, 0, drop_event(), &directory()).view();
        let mut log = FlowLog::open(&path, 10, 1).unwrap();
        log.write(&view).unwrap();
        log.write(&view).unwrap();
        log.flush().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert_eq!(
            fs::read_to_string(log.rotated(1)).unwrap().lines().count(),
            1
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
