"""Audio: wav I/O and resampling, the F5-TTS "vocos" log-mel spectrogram, and the vocoders back to
waveforms (Griffin-Lim, Vocos) with `vocoder.load_vocoder`."""
