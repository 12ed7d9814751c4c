"""handwriting-ai: reads handwritten digits and trains better models for itself."""
