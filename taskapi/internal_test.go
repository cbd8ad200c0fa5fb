package taskapi

import "os"

func tempSocketDir() (string, error) { return os.MkdirTemp("", "taskapi") }

func removeAll(dir string) { os.RemoveAll(dir) }
