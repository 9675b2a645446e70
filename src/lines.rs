//! Splitting a byte stream into lines without unbounded buffering: the
//! container's stdout (protocol lines) and socket clients both arrive in
//! arbitrary chunks, and neither may make the host hold a line past its limit.

/// One unit out of a byte stream.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A line, without its `\n`.
    Line(Vec<u8>),
    /// A line longer than allowed, dropped as it streamed past (its length).
    TooLong(usize),
}

/// Splits a byte stream into lines, holding at most `max` bytes of any one.
pub struct LineSplitter {
    max: usize,
    partial: Vec<u8>,
    /// Set while skipping the rest of an over-long line: its length so far.
    discarding: Option<usize>,
}

impl LineSplitter {
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            max,
            partial: Vec::new(),
            discarding: None,
        }
    }

    pub fn push(&mut self, mut chunk: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(newline) = chunk.iter().position(|&b| b == b'\n') {
            let (head, tail) = chunk.split_at(newline);
            chunk = &tail[1..];
            match self.discarding.take() {
                Some(length) => frames.push(Frame::TooLong(length + head.len())),
                None if self.partial.len() + head.len() > self.max => {
                    frames.push(Frame::TooLong(self.partial.len() + head.len()));
                    self.partial.clear();
                }
                None => {
                    self.partial.extend_from_slice(head);
                    frames.push(Frame::Line(std::mem::take(&mut self.partial)));
                }
            }
        }
        match self.discarding.as_mut() {
            Some(length) => *length += chunk.len(),
            None if self.partial.len() + chunk.len() > self.max => {
                self.discarding = Some(self.partial.len() + chunk.len());
                self.partial = Vec::new(); // give the memory back
            }
            None => self.partial.extend_from_slice(chunk),
        }
        frames
    }

    /// What is left when the stream ends without a final newline.
    pub fn finish(&mut self) -> Option<Frame> {
        if let Some(length) = self.discarding.take() {
            return Some(Frame::TooLong(length));
        }
        (!self.partial.is_empty()).then(|| Frame::Line(std::mem::take(&mut self.partial)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_chunks() {
        let mut lines = LineSplitter::new(16);
        assert!(lines.push(b"{\"a\"").is_empty());
        assert_eq!(
            lines.push(b":1}\n\nsecond\npart"),
            vec![
                Frame::Line(b"{\"a\":1}".to_vec()),
                Frame::Line(Vec::new()),
                Frame::Line(b"second".to_vec()),
            ]
        );
        assert_eq!(lines.push(b"ial\n"), vec![Frame::Line(b"partial".to_vec())]);
        assert_eq!(lines.finish(), None);
        lines.push(b"no newline");
        assert_eq!(lines.finish(), Some(Frame::Line(b"no newline".to_vec())));
    }

    #[test]
    fn an_over_long_line_is_refused_without_holding_it_and_the_next_survives() {
        let mut lines = LineSplitter::new(8);
        assert!(lines.push(b"12345").is_empty());
        assert!(lines.push(b"6789").is_empty());
        // Nothing of the long line is kept while it streams past.
        assert!(lines.partial.capacity() == 0);
        assert!(lines.push(&[b'x'; 100]).is_empty());
        assert!(lines.partial.is_empty());
        assert_eq!(
            lines.push(b"yz\nok\n"),
            vec![Frame::TooLong(111), Frame::Line(b"ok".to_vec())]
        );
        // Exactly the limit is fine; one more byte in a single chunk is not.
        assert_eq!(
            lines.push(b"12345678\n123456789\n"),
            vec![Frame::Line(b"12345678".to_vec()), Frame::TooLong(9)]
        );
        lines.push(&[b'x'; 9]);
        assert_eq!(lines.finish(), Some(Frame::TooLong(9)));
    }
}
