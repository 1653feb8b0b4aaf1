"""Training stage: one recipe (TRL SFTTrainer + PEFT) driven by one validated config."""
