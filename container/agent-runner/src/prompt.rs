//! The system prompt of a run: who the assistant is, where it runs, how its
//! replies reach people, and the group's memory files read into it.

use std::io::Read;

use crate::wire::StartRun;

/// Memory files (`CLAUDE.md`) are read into the system prompt up to this size,
/// so a runaway file cannot blow the context window.
const MAX_MEMORY_BYTES: u64 = 64 * 1024;

/// Where the group's and the global memory live inside the container.
const MEMORY_FILES: [(&str, &str); 2] = [
    ("group memory", "/workspace/group/CLAUDE.md"),
    ("global memory", "/workspace/global/CLAUDE.md"),
];

/// A memory file's label and content, already read by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    pub label: String,
    pub text: String,
}

/// The system prompt for a run: who the assistant is, where it runs, how its
/// replies reach people, and the group's memory.
pub fn build_system_prompt(start: &StartRun, memories: &[Memory]) -> String {
    let scope = if start.is_main {
        "This is the main group: the owner's private control chat."
    } else {
        "This is a regular group chat, not the owner's main control chat."
    };
    let mut prompt = format!(
        "You are {name}, a personal assistant.\n\
         Group folder: {folder} (your working directory is /workspace/group).\n\
         {scope}\n\
         Timezone: {tz}.\n\
         Your replies are delivered as messages in a chat, so keep them concise.\n\
         Text wrapped in <internal>...</internal> is never shown to users; use it for \
         notes to yourself.\n\
         \n\
         Tools: bash (busybox shell in /workspace/group, no network), read_file, \
         write_file, edit_file, list, glob and grep work on files under /workspace and \
         /tmp. send_message sends a message before your reply ends; schedule_task, \
         list_tasks, pause_task, resume_task, cancel_task and update_task manage \
         scheduled tasks; web_fetch fetches a URL.{register}\n\
         \n\
         Memory: /workspace/group/CLAUDE.md is this group's memory and is read into \
         this prompt at every start. To remember something, edit it (edit_file or \
         write_file). {global}",
        name = start.assistant_name,
        folder = start.group_folder,
        tz = start.timezone,
        register = if start.is_main {
            " register_group registers a chat as a new group."
        } else {
            ""
        },
        global = if start.is_main {
            "/workspace/global/CLAUDE.md is shared by every group; edit it for what \
             all groups should know."
        } else {
            "/workspace/global/CLAUDE.md is shared memory and read-only here."
        },
    );
    for memory in memories.iter().filter(|m| !m.text.trim().is_empty()) {
        prompt.push_str(&format!(
            "\n\n<{label}>\n{text}\n</{label}>",
            label = memory.label.replace(' ', "_"),
            text = memory.text.trim_end()
        ));
    }
    prompt
}

/// Reads the memory files that exist, each capped at [`MAX_MEMORY_BYTES`].
pub fn read_memories() -> Vec<Memory> {
    MEMORY_FILES
        .iter()
        .filter_map(|(label, path)| {
            let file = std::fs::File::open(path).ok()?;
            let mut bytes = Vec::new();
            file.take(MAX_MEMORY_BYTES).read_to_end(&mut bytes).ok()?;
            Some(Memory {
                label: label.to_string(),
                text: String::from_utf8_lossy(&bytes).into_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::test_support::start;

    #[test]
    fn system_prompt_names_assistant_folder_scope_timezone_and_internal() {
        let mut s = start("hi");
        let prompt = build_system_prompt(&s, &[]);
        assert!(prompt.contains("You are Talon"));
        assert!(prompt.contains("family"));
        assert!(prompt.contains("Europe/Berlin"));
        assert!(prompt.contains("not the owner's main"));
        assert!(prompt.contains("concise"));
        assert!(prompt.contains("<internal>...</internal>"));
        s.is_main = true;
        assert!(build_system_prompt(&s, &[]).contains("This is the main group"));
    }

    #[test]
    fn system_prompt_includes_non_empty_memory_only() {
        let memories = vec![
            Memory {
                label: "group memory".into(),
                text: "Mum's birthday is 3 May.\n".into(),
            },
            Memory {
                label: "global memory".into(),
                text: "  \n".into(),
            },
        ];
        let prompt = build_system_prompt(&start("hi"), &memories);
        assert!(prompt.contains("<group_memory>\nMum's birthday is 3 May.\n</group_memory>"));
        assert!(!prompt.contains("global_memory"));
    }
}
