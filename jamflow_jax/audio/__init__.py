"""Audio: wav I/O and resampling, the F5-TTS "vocos" log-mel spectrogram."""
