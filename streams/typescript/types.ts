// Generated from handwriting_ai.contracts by `digits schemas`: never edit by hand.
// Regenerate with: ./dev run digits schemas   (zod 4; checked with typescript 5.9.3, zod 4.6.7)

/** A worker took the job and is about to train. Every field is always present; readers ignore unknown fields. */
export interface TrainStarted {
  type: "digits.train.started.v1";
  /** The job's request_id; correlates every event of a job. */
  request_id: string;
  /** The user who asked for the job; 0 when none. */
  user_id: number;
  /** The model being trained. */
  model_id: string;
  /** The training run's id; null until the run has one. */
  run_id: string | null;
  /** When the event happened, ISO 8601 UTC. */
  ts: string;
  /** Epochs the job asked for. */
  total_epochs: number;
  /** Delivery attempt of the job, counted from 1; above 1 after a retry. */
  attempt: number;
}

/** Progress inside an epoch, every `EVENTS__BATCH_EVERY` batches (0 turns these off). Every field is always present; readers ignore unknown fields. */
export interface TrainBatch {
  type: "digits.train.batch.v1";
  /** The job's request_id; correlates every event of a job. */
  request_id: string;
  /** The user who asked for the job; 0 when none. */
  user_id: number;
  /** The model being trained. */
  model_id: string;
  /** The training run's id; null until the run has one. */
  run_id: string | null;
  /** When the event happened, ISO 8601 UTC. */
  ts: string;
  /** Epoch number, counted from 1. */
  epoch: number;
  /** Epochs the job asked for. */
  total_epochs: number;
  /** Batch number within the epoch, counted from 1. */
  batch: number;
  /** Batches in one epoch. */
  total_batches: number;
  /** Loss of this batch. */
  batch_loss: number;
  /** Accuracy on this batch, 0 to 1. */
  batch_acc: number;
  /** Mean loss over the epoch so far. */
  avg_loss: number;
  /** Training throughput. */
  samples_per_sec: number;
}

/** An epoch ended and was evaluated on the validation split. Every field is always present; readers ignore unknown fields. */
export interface TrainEpoch {
  type: "digits.train.epoch.v1";
  /** The job's request_id; correlates every event of a job. */
  request_id: string;
  /** The user who asked for the job; 0 when none. */
  user_id: number;
  /** The model being trained. */
  model_id: string;
  /** The training run's id; null until the run has one. */
  run_id: string | null;
  /** When the event happened, ISO 8601 UTC. */
  ts: string;
  /** Epoch number, counted from 1. */
  epoch: number;
  /** Epochs the job asked for. */
  total_epochs: number;
  /** Mean training loss of the epoch. */
  train_loss: number;
  /** Accuracy as a fraction, 0 to 1. */
  val_acc: number;
  /** Wall time of the epoch in seconds. */
  time_s: number;
}

/** The epoch just ended is the best so far on validation accuracy. Every field is always present; readers ignore unknown fields. */
export interface TrainBest {
  type: "digits.train.best.v1";
  /** The job's request_id; correlates every event of a job. */
  request_id: string;
  /** The user who asked for the job; 0 when none. */
  user_id: number;
  /** The model being trained. */
  model_id: string;
  /** The training run's id; null until the run has one. */
  run_id: string | null;
  /** When the event happened, ISO 8601 UTC. */
  ts: string;
  /** Epoch number, counted from 1. */
  epoch: number;
  /** Accuracy as a fraction, 0 to 1. */
  val_acc: number;
}

/** The run's artifacts (model.pt, manifest.json, metrics.json) were written. Every field is always present; readers ignore unknown fields. */
export interface TrainArtifact {
  type: "digits.train.artifact.v1";
  /** The job's request_id; correlates every event of a job. */
  request_id: string;
  /** The user who asked for the job; 0 when none. */
  user_id: number;
  /** The model being trained. */
  model_id: string;
  /** The training run's id; null until the run has one. */
  run_id: string | null;
  /** When the event happened, ISO 8601 UTC. */
  ts: string;
  /** Directory of the artifacts on the worker's machine. */
  path: string;
}

/** The worker uploaded the artifacts to the API. Every field is always present; readers ignore unknown fields. */
export interface TrainUpload {
  type: "digits.train.upload.v1";
  /** The job's request_id; correlates every event of a job. */
  request_id: string;
  /** The user who asked for the job; 0 when none. */
  user_id: number;
  /** The model being trained. */
  model_id: string;
  /** The training run's id; null until the run has one. */
  run_id: string | null;
  /** When the event happened, ISO 8601 UTC. */
  ts: string;
  /** HTTP status of the upload request. */
  status: number;
  /** Size of model.pt in bytes. */
  model_bytes: number;
  /** Size of manifest.json in bytes. */
  manifest_bytes: number;
}

/** Old runs of the model were deleted to keep the newest few. Every field is always present; readers ignore unknown fields. */
export interface TrainPrune {
  type: "digits.train.prune.v1";
  /** The job's request_id; correlates every event of a job. */
  request_id: string;
  /** The user who asked for the job; 0 when none. */
  user_id: number;
  /** The model being trained. */
  model_id: string;
  /** The training run's id; null until the run has one. */
  run_id: string | null;
  /** When the event happened, ISO 8601 UTC. */
  ts: string;
  /** Runs deleted. */
  deleted_count: number;
}

/** The job finished: the model is trained and uploaded. Final: no event follows. Every field is always present; readers ignore unknown fields. */
export interface TrainCompleted {
  type: "digits.train.completed.v1";
  /** The job's request_id; correlates every event of a job. */
  request_id: string;
  /** The user who asked for the job; 0 when none. */
  user_id: number;
  /** The model being trained. */
  model_id: string;
  /** The training run's id; null until the run has one. */
  run_id: string | null;
  /** When the event happened, ISO 8601 UTC. */
  ts: string;
  /** Accuracy as a fraction, 0 to 1. */
  val_acc: number;
  /** Accuracy on the test split, 0 to 1; null when not measured. */
  test_acc: number | null;
  /** The manifest version of the new model; the API reloads by it. */
  version: string | null;
  /** A `use_feedback` job's accuracy on the corrections it held back, 0 to 1; null otherwise. */
  feedback_acc: number | null;
  /** How many corrections the job held back. */
  feedback_holdout: number;
}

/** The job failed. Final unless `will_retry`: then the job is delivered again. Every field is always present; readers ignore unknown fields. */
export interface TrainFailed {
  type: "digits.train.failed.v1";
  /** The job's request_id; correlates every event of a job. */
  request_id: string;
  /** The user who asked for the job; 0 when none. */
  user_id: number;
  /** The model being trained. */
  model_id: string;
  /** The training run's id; null until the run has one. */
  run_id: string | null;
  /** When the event happened, ISO 8601 UTC. */
  ts: string;
  /** `user`: the job asked for something impossible, never retried; `system`: ours. */
  error_kind: "user" | "system";
  /** What went wrong, readable by the user. */
  message: string;
  /** Delivery attempt of the job, counted from 1; above 1 after a retry. */
  attempt: number;
  /** True when the job will be delivered again after this. */
  will_retry: boolean;
  /** True when the job ended because it was cancelled by request (`error_kind` is then `user`, `will_retry` false): a follower tells a cancellation from a failure. */
  cancelled: boolean;
}

/** The model registry changed: an operator served, unserved, promoted, rolled back, pinned or
    unpinned a model, or the promotion gate judged a new version (`promoted`, `held`, `refused`).
    Every API replica reconciles on it. `request_id` is the HTTP request's id for an operator's
    change, and the training job's for the gate's decision on the version that job made. Every field is always present; readers ignore unknown fields. */
export interface ModelChanged {
  type: "digits.model.changed.v1";
  /** The job's request_id; correlates every event of a job. */
  request_id: string;
  /** The user who asked for the job; 0 when none. */
  user_id: number;
  /** The model being trained. */
  model_id: string;
  /** The training run's id; null until the run has one. */
  run_id: string | null;
  /** When the event happened, ISO 8601 UTC. */
  ts: string;
  /** What changed. */
  action: "served" | "unserved" | "promoted" | "rolled_back" | "pinned" | "unpinned" | "held" | "refused";
  /** `operator`: through the admin API; `gate`: the promotion gate's decision. */
  by: "operator" | "gate";
  /** The version the change is about; null for (un)serve. */
  version: string | null;
  /** The version served before, when the change moved it. */
  old_version: string | null;
  /** The served model ids after the change, in ensemble order. */
  served: Array<string>;
  /** Why, for a gate decision or a rollback. */
  reason: string;
}

/** A request to train one model; `model_id` is the only field without a default. JSON form: the body of POST /v1/train. Without request_id the API makes one. */
export interface TrainJob {
  /** Message type. */
  type: "digits.train.v1";
  /** Correlates the job's events; on the stream, omitted means `job-<entry id>`. */
  request_id?: string | undefined;
  /** The user who asked; 0 for none. */
  user_id: number;
  /** The model to train; its artifacts go under this name. */
  model_id: string;
  /** Epochs to train. */
  epochs: number;
  /** Batch size; 0 means auto. */
  batch_size: number;
  /** Learning rate. */
  lr: number;
  /** Random seed of the run. */
  seed: number;
  /** Train on augmented images. */
  augment: boolean;
  /** Free text kept in the manifest. */
  notes: string;
  /** Mix the corrections on `digits:feedback` into training, holding some back to measure the new version on them (`feedback_acc`). */
  use_feedback: boolean;
}

/** TrainJob as a sender writes it: fields with a default may be left out. */
export interface TrainJobInput {
  /** Message type. */
  type?: "digits.train.v1" | undefined;
  /** Correlates the job's events; on the stream, omitted means `job-<entry id>`. */
  request_id?: string | undefined;
  /** The user who asked; 0 for none. */
  user_id?: number | undefined;
  /** The model to train; its artifacts go under this name. */
  model_id: string;
  /** Epochs to train. */
  epochs?: number | undefined;
  /** Batch size; 0 means auto. */
  batch_size?: number | undefined;
  /** Learning rate. */
  lr?: number | undefined;
  /** Random seed of the run. */
  seed?: number | undefined;
  /** Train on augmented images. */
  augment?: boolean | undefined;
  /** Free text kept in the manifest. */
  notes?: string | undefined;
  /** Mix the corrections on `digits:feedback` into training, holding some back to measure the new version on them (`feedback_acc`). */
  use_feedback?: boolean | undefined;
}

/** A request to train one model; `model_id` is the only field without a default. Flat form: the fields of an entry on digits:train, every value a string. Without request_id it is job-<entry id>. Unknown fields are refused. */
export interface TrainJobFields {
  /** Message type. */
  type: "digits.train.v1";
  /** Correlates the job's events; on the stream, omitted means `job-<entry id>`. */
  request_id?: string | undefined;
  /** The user who asked; 0 for none. Integer as text, 0 to 9223372036854775807. */
  user_id: string;
  /** The model to train; its artifacts go under this name. */
  model_id: string;
  /** Epochs to train. Integer as text, 1 to 500. */
  epochs: string;
  /** Batch size; 0 means auto. Integer as text, 0 to 8192. */
  batch_size: string;
  /** Learning rate. Number as text, more than 0 and at most 1. */
  lr: string;
  /** Random seed of the run. Integer as text, 0 to 4294967295. */
  seed: string;
  /** Train on augmented images. Boolean (true/false, 1/0, yes/no, on/off, any case) as text. */
  augment: string;
  /** Free text kept in the manifest. */
  notes: string;
  /** Mix the corrections on `digits:feedback` into training, holding some back to measure the new version on them (`feedback_acc`). Boolean (true/false, 1/0, yes/no, on/off, any case) as text. */
  use_feedback: string;
}

/** TrainJobFields as a sender writes it: fields with a default may be left out. */
export interface TrainJobFieldsInput {
  /** Message type. */
  type?: "digits.train.v1" | undefined;
  /** Correlates the job's events; on the stream, omitted means `job-<entry id>`. */
  request_id?: string | undefined;
  /** The user who asked; 0 for none. Integer as text, 0 to 9223372036854775807. */
  user_id?: string | undefined;
  /** The model to train; its artifacts go under this name. */
  model_id: string;
  /** Epochs to train. Integer as text, 1 to 500. */
  epochs?: string | undefined;
  /** Batch size; 0 means auto. Integer as text, 0 to 8192. */
  batch_size?: string | undefined;
  /** Learning rate. Number as text, more than 0 and at most 1. */
  lr?: string | undefined;
  /** Random seed of the run. Integer as text, 0 to 4294967295. */
  seed?: string | undefined;
  /** Train on augmented images. Boolean (true/false, 1/0, yes/no, on/off, any case) as text. */
  augment?: string | undefined;
  /** Free text kept in the manifest. */
  notes?: string | undefined;
  /** Mix the corrections on `digits:feedback` into training, holding some back to measure the new version on them (`feedback_acc`). Boolean (true/false, 1/0, yes/no, on/off, any case) as text. */
  use_feedback?: string | undefined;
}

/** A person said what digit an earlier read was; the sample is the one the models saw. Flat form: the fields of an entry on digits:feedback, every value a string. */
export interface DigitsFeedbackV1Fields {
  /** Message type. */
  type: "digits.feedback.v1";
  /** The read's request_id (one correction per read). */
  request_id: string;
  /** The right digit. Integer as text, 0 to 9. */
  label: string;
  /** The digit the service read. Integer as text, 0 to 9. */
  predicted: string;
  /** The service's confidence in `predicted`. Number as text, 0 to 1. */
  confidence: string;
  /** The model (or ensemble) that read it. */
  model_id: string;
  /** Who corrected it; 0 when unknown. Integer as text, 0 to 9223372036854775807. */
  user_id: string;
  /** When it was corrected, ISO 8601 UTC. */
  ts: string;
  /** The 28×28 preprocessed image, uint8 row-major, ink bright on black, base64. */
  sample: string;
}

/** DigitsFeedbackV1Fields as a sender writes it: fields with a default may be left out. */
export interface DigitsFeedbackV1FieldsInput {
  /** Message type. */
  type?: "digits.feedback.v1" | undefined;
  /** The read's request_id (one correction per read). */
  request_id: string;
  /** The right digit. Integer as text, 0 to 9. */
  label: string;
  /** The digit the service read. Integer as text, 0 to 9. */
  predicted: string;
  /** The service's confidence in `predicted`. Number as text, 0 to 1. */
  confidence: string;
  /** The model (or ensemble) that read it. */
  model_id: string;
  /** Who corrected it; 0 when unknown. Integer as text, 0 to 9223372036854775807. */
  user_id?: string | undefined;
  /** When it was corrected, ISO 8601 UTC. */
  ts: string;
  /** The 28×28 preprocessed image, uint8 row-major, ink bright on black, base64. */
  sample: string;
}

/** A job entry that will not run, moved to `digits:train:dead` with the reason. Flat form: the fields of an entry on digits:train:dead. */
export interface DeadLetterFields {
  /** The entry's id in digits:train. */
  entry_id: string;
  /** The job's request_id, or `job-<entry id>`. */
  request_id: string;
  /** Why: the readable `reason @ $.path` errors, `; `-joined. */
  reason: string;
  /** Times the entry was delivered. Integer as text, at least 1. */
  deliveries: string;
  /** When it was dead-lettered, ISO 8601 UTC. */
  ts: string;
  /** The entry's original fields as one JSON object. */
  entry_fields: string;
}

/** Every training event on the events stream; `type` tells them apart. */
export type TrainEvent =
  | TrainStarted
  | TrainBatch
  | TrainEpoch
  | TrainBest
  | TrainArtifact
  | TrainUpload
  | TrainPrune
  | TrainCompleted
  | TrainFailed
  | ModelChanged;

export type TrainEventType = TrainEvent["type"];

export const EVENT_TYPES = [
  "digits.train.started.v1",
  "digits.train.batch.v1",
  "digits.train.epoch.v1",
  "digits.train.best.v1",
  "digits.train.artifact.v1",
  "digits.train.upload.v1",
  "digits.train.prune.v1",
  "digits.train.completed.v1",
  "digits.train.failed.v1",
  "digits.model.changed.v1",
] as const;

export const JOB_TYPE = "digits.train.v1";

/** The Redis streams: XADD jobs, XREAD events, XRANGE dead letters. */
export const STREAMS = { jobs: "digits:train", events: "digits:events", dead: "digits:train:dead" } as const;

/** No further event follows for this job (a failure that will retry is not final). */
export function isFinal(event: TrainEvent): boolean {
  switch (event.type) {
    case "digits.train.completed.v1":
      return true;
    case "digits.train.failed.v1":
      return !event.will_retry;
    default:
      return false;
  }
}
