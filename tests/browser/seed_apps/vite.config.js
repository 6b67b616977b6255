// Two pages, one per seed component: react/index.html and vue/index.html.
// The JSX needs no plugin: Vite's own esbuild step compiles .jsx files, and the
// seed component imports React itself.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';
import vue from '@vitejs/plugin-vue';

const page = (name) => fileURLToPath(new URL(`${name}/index.html`, import.meta.url));

export default defineConfig({
  plugins: [vue()],
  logLevel: 'warn',
  build: {
    rollupOptions: { input: { react: page('react'), vue: page('vue') } },
  },
});
