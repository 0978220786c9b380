"""The Beam labelling job: match WAV files, score them with the keyword model, write Parquet."""
