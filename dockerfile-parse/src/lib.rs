//! BuildKit-faithful Dockerfile front end (in progress: see the dockerfile-parse issue).
