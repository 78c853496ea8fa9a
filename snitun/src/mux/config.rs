//! Limits and timeouts of one multiplexed link.

use std::time::Duration;

const MIB: usize = 1024 * 1024;
const KIB: usize = 1024;

/// Every limit and timeout of a link, with the reference's defaults.
///
/// [`MuxConfig::from_env`] applies the reference's `MULTIPLEXER_*`
/// environment overrides; tests shrink the fields directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxConfig {
    /// Incoming queue per channel: at this many bytes send PAUSE (2 MiB).
    pub incoming_high_watermark: usize,
    /// Incoming queue per channel: at or below this send RESUME (512 KiB).
    pub incoming_low_watermark: usize,
    /// Incoming queue hard cap per channel (65 MiB); DATA arriving at the
    /// cap closes the channel.
    pub incoming_max_bytes: usize,
    /// The cap for protocol 0, which has no PAUSE (256 MiB).
    pub incoming_max_bytes_v0: usize,
    /// Outgoing queue per channel: over this the channel stops taking
    /// writes (1 MiB).
    pub outgoing_high_watermark: usize,
    /// Outgoing queue per channel: writes resume at or below this (512 KiB).
    pub outgoing_low_watermark: usize,
    /// Outgoing queue hard cap per channel (12 MiB).
    pub outgoing_max_bytes: usize,
    /// Largest payload a received header may announce; larger closes the
    /// link. `None`: the incoming cap of the link's protocol version.
    pub max_frame_size: Option<usize>,
    /// Largest payload we put in one DATA frame (64 KiB): large enough for
    /// bulk speed, small enough for round-robin fairness.
    pub max_send_frame: usize,
    /// Close the link after this long without a successful read or write
    /// (90 s; the check runs a few times per period, so it fires between
    /// 1x and 1.33x this value, as the reference's 90-120 s).
    pub idle_timeout: Duration,
    /// How long [`ping`](super::Multiplexer::ping) waits for the pong (90 s).
    pub ping_timeout: Duration,
    /// Optional throttling: after each sent frame of >= 8 KiB, sleep
    /// 1/N s.
    pub throttling: Option<u32>,
    /// New channels announced by the remote and not yet taken by the
    /// application; more are refused with CLOSE.
    pub max_pending_channels: usize,
    /// Reads from the link are made into a buffer of at least this size.
    pub read_buffer_size: usize,
}

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            incoming_high_watermark: 2 * MIB,
            incoming_low_watermark: 512 * KIB,
            incoming_max_bytes: 65 * MIB,
            incoming_max_bytes_v0: 256 * MIB,
            outgoing_high_watermark: MIB,
            outgoing_low_watermark: 512 * KIB,
            outgoing_max_bytes: 12 * MIB,
            max_frame_size: None,
            max_send_frame: 64 * KIB,
            idle_timeout: Duration::from_secs(90),
            ping_timeout: Duration::from_secs(90),
            throttling: None,
            max_pending_channels: 1024,
            read_buffer_size: 256 * KIB,
        }
    }
}

impl MuxConfig {
    /// The defaults with the reference's environment overrides applied:
    /// `MULTIPLEXER_INCOMING_QUEUE_MAX_BYTES_CHANNEL`,
    /// `MULTIPLEXER_INCOMING_QUEUE_MAX_BYTES_CHANNEL_V0`,
    /// `MULTIPLEXER_INCOMING_QUEUE_LOW_WATERMARK`,
    /// `MULTIPLEXER_INCOMING_QUEUE_HIGH_WATERMARK`,
    /// `MULTIPLEXER_OUTGOING_QUEUE_MAX_BYTES_CHANNEL`,
    /// `MULTIPLEXER_OUTGOING_QUEUE_LOW_WATERMARK`,
    /// `MULTIPLEXER_OUTGOING_QUEUE_HIGH_WATERMARK`. Values that are not
    /// positive integers are ignored (with a warning).
    pub fn from_env() -> Self {
        let mut config = MuxConfig::default();
        config.apply_env(|name| std::env::var(name).ok());
        config
    }

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        let fields: [(&str, &mut usize); 7] = [
            (
                "MULTIPLEXER_INCOMING_QUEUE_MAX_BYTES_CHANNEL",
                &mut self.incoming_max_bytes,
            ),
            (
                "MULTIPLEXER_INCOMING_QUEUE_MAX_BYTES_CHANNEL_V0",
                &mut self.incoming_max_bytes_v0,
            ),
            (
                "MULTIPLEXER_INCOMING_QUEUE_LOW_WATERMARK",
                &mut self.incoming_low_watermark,
            ),
            (
                "MULTIPLEXER_INCOMING_QUEUE_HIGH_WATERMARK",
                &mut self.incoming_high_watermark,
            ),
            (
                "MULTIPLEXER_OUTGOING_QUEUE_MAX_BYTES_CHANNEL",
                &mut self.outgoing_max_bytes,
            ),
            (
                "MULTIPLEXER_OUTGOING_QUEUE_LOW_WATERMARK",
                &mut self.outgoing_low_watermark,
            ),
            (
                "MULTIPLEXER_OUTGOING_QUEUE_HIGH_WATERMARK",
                &mut self.outgoing_high_watermark,
            ),
        ];
        for (name, field) in fields {
            if let Some(value) = get(name) {
                match value.trim().parse::<usize>() {
                    Ok(parsed) if parsed > 0 => *field = parsed,
                    _ => tracing::warn!(%name, %value, "ignoring invalid environment override"),
                }
            }
        }
    }

    /// The incoming cap for a link of `protocol_version`.
    pub fn incoming_cap(&self, protocol_version: u8) -> usize {
        if protocol_version == 0 {
            self.incoming_max_bytes_v0
        } else {
            self.incoming_max_bytes
        }
    }

    /// The frame size limit for a link of `protocol_version`.
    pub fn frame_limit(&self, protocol_version: u8) -> usize {
        self.max_frame_size
            .unwrap_or_else(|| self.incoming_cap(protocol_version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides() {
        let mut config = MuxConfig::default();
        config.apply_env(|name| match name {
            "MULTIPLEXER_INCOMING_QUEUE_HIGH_WATERMARK" => Some("4096".into()),
            "MULTIPLEXER_OUTGOING_QUEUE_LOW_WATERMARK" => Some("nope".into()),
            "MULTIPLEXER_OUTGOING_QUEUE_MAX_BYTES_CHANNEL" => Some("0".into()),
            _ => None,
        });
        assert_eq!(config.incoming_high_watermark, 4096);
        assert_eq!(config.outgoing_low_watermark, 512 * KIB);
        assert_eq!(config.outgoing_max_bytes, 12 * MIB);
        assert_eq!(config.frame_limit(0), 256 * MIB);
        assert_eq!(config.frame_limit(2), 65 * MIB);
    }
}
